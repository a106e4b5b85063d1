rule heal:
    input:
        model=get_base_model(),
        ablated="results/{variant}/ablated",
        harmful=prompt_file("harmful", "train"),
        harmless=prompt_file("harmless", "train"),
        harmful_val=prompt_file("harmful", "val"),
        harmless_val=prompt_file("harmless", "val"),
    output:
        model=directory("results/{variant}/healed"),
        pairs="results/{variant}/dpo_pairs.jsonl",
        training_log="results/{variant}/heal_training_log.csv",
    log:
        "logs/heal/{variant}.log",
    benchmark:
        "benchmarks/heal/{variant}.tsv"
    priority: JOB_PRIORITY["heal"]
    conda:
        "../envs/bruno.yaml"
    threads: MODEL_JOB_THREADS
    resources:
        mem_mb=16000,
        runtime=120,
        gpu=1,
    params:
        model_path=get_model_path,
        model=config["model"],
        healing=variant_section("healing"),
        refusal_markers=config["evaluation"]["refusal_markers"],
        seed=config["seed"],
    script:
        "../scripts/heal.py"
