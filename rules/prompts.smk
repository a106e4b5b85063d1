rule prompts:
    input:
        get_prompt_sources(),
    output:
        files=expand("results/prompts/{set}_{split}.jsonl", set=SETS, split=SPLITS),
        manifest="results/prompts/manifest.json",
    log:
        "logs/prompts/prompts.log",
    conda:
        "../envs/bruno.yaml"
    params:
        data=config["data"],
    script:
        "../scripts/prompts.py"
