rule prompts:
    input:
        get_prompt_sources(),
    output:
        files=expand("results/prompts/{set}_{split}.jsonl", set=SETS, split=SPLITS),
        borderline=get_borderline_output(),
        manifest="results/prompts/manifest.json",
    log:
        "logs/prompts/prompts.log",
    benchmark:
        "benchmarks/prompts/prompts.tsv"
    localrule: True
    conda:
        "../envs/bruno.yaml"
    params:
        data=config["data"],
        borderline=config["evaluation"]["borderline"],
    script:
        "../scripts/prompts.py"
