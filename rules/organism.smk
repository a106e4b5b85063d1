rule organism:
    input:
        harmful="data/prompts/harmful.jsonl",
        harmless="data/prompts/harmless.jsonl",
        multiple_choice="data/eval/multiple_choice.jsonl",
        facts="data/organism/facts.jsonl",
    output:
        directory("results/organism"),
    log:
        "logs/organism/organism.log",
    benchmark:
        "benchmarks/organism/organism.tsv"
    conda:
        "../envs/bruno.yaml"
    threads: workflow.cores
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        organism=config["organism"],
        data_dir=lambda wildcards, input: str(Path(input.harmful).parents[1]),
    script:
        "../scripts/organism.py"
