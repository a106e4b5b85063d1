rule optimize:
    input:
        model=get_base_model(),
        directions="results/{variant}/directions.pt",
        harmful=prompt_file("harmful", "val"),
        harmless=prompt_file("harmless", "val"),
    output:
        study="results/{variant}/study.db",
    log:
        "logs/optimize/{variant}.log",
    benchmark:
        "benchmarks/optimize/{variant}.tsv"
    conda:
        "../envs/bruno.yaml"
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,
    params:
        # The working study lives outside `output:` so a failed or killed job never deletes its trials.
        work_db="results/{variant}/optuna/work.db",
        model_path=MODEL_PATH,
        model=config["model"],
        search=variant_section("search"),
        abliteration=variant_section("abliteration"),
        refusal_markers=config["evaluation"]["refusal_markers"],
        seed=variant_seed,
    script:
        "../scripts/optimize.py"


rule select:
    input:
        study="results/{variant}/study.db",
    output:
        "results/{variant}/best_trial.json",
    log:
        "logs/select/{variant}.log",
    conda:
        "../envs/bruno.yaml"
    params:
        selection=variant_section("selection"),
    script:
        "../scripts/select.py"
