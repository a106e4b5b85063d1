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
    conda:
        "../envs/bruno.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1,
    params:
        model_path=MODEL_PATH,
        model=config["model"],
        abliteration=variant_section("abliteration"),
    script:
        "../scripts/abliterate.py"
