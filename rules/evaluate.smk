rule evaluate_base:
    input:
        model=get_base_model(),
        harmful=prompt_file("harmful", "test"),
        harmless=prompt_file("harmless", "test"),
    output:
        refusals="results/eval/base/refusals.csv",
        metrics="results/eval/base/metrics.json",
        logprobs="results/eval/base/harmless_logprobs.pt",
    log:
        "logs/evaluate/base.log",
    benchmark:
        "benchmarks/evaluate/base.tsv"
    conda:
        "../envs/bruno.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    params:
        model_path=MODEL_PATH,
        model=config["model"],
        evaluation=config["evaluation"],
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"


rule evaluate_stage:
    input:
        model=get_stage_model,
        harmful=prompt_file("harmful", "test"),
        harmless=prompt_file("harmless", "test"),
        base_logprobs="results/eval/base/harmless_logprobs.pt",
    output:
        refusals="results/eval/{variant}/{stage}/refusals.csv",
        metrics="results/eval/{variant}/{stage}/metrics.json",
    log:
        "logs/evaluate/{variant}_{stage}.log",
    benchmark:
        "benchmarks/evaluate/{variant}_{stage}.tsv"
    conda:
        "../envs/bruno.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    params:
        model=config["model"],
        evaluation=config["evaluation"],
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"
