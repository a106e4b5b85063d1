rule abliterate:
    input:
        model=get_base_model(),
        directions="results/{variant}/directions.pt",
        best="results/{variant}/best_trial.json",
    output:
        model=directory("results/{variant}/ablated"),
        edit="results/{variant}/ablation.json",
    log:
        "logs/abliterate/{variant}.log",
    benchmark:
        "benchmarks/abliterate/{variant}.tsv"
    priority: JOB_PRIORITY["search"]
    conda:
        "../envs/bruno.yaml"
    threads: MODEL_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    params:
        model_path=get_model_path,
        model=config["model"],
        abliteration=variant_section("abliteration"),
    script:
        "../scripts/abliterate.py"
