rule organism:
    input:
        "data/prompts/harmful.jsonl",
        "data/prompts/harmless.jsonl",
        "data/eval/multiple_choice.jsonl",
        "data/eval/factual_qa.jsonl",
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
        data_dir="data",
    script:
        "../scripts/organism.py"
