# Safety tuning (safety_tuning.enabled): implant a refusal into a model that barely refuses as shipped. The result,
# results/safety_tuned, is the base model of every later stage (rules/common.smk: MODEL_PATH, get_base_model).


rule safety_tune:
    input:
        model=get_untuned_model(),
        harmful=prompt_file("harmful", "train"),
        harmless=prompt_file("harmless", "train"),
    output:
        directory(SAFETY_TUNED_PATH),
    log:
        "logs/safety_tune/safety_tune.log",
    benchmark:
        "benchmarks/safety_tune/safety_tune.tsv"
    conda:
        "../envs/bruno.yaml"
    threads: MODEL_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        settings=config["safety_tuning"],
        seed=stage_seed(config["safety_tuning"]["seed"], config["seed"]),
        model_path=get_untuned_model_path,
        label=BASE_MODEL_LABEL,
    script:
        "../scripts/safety_tune.py"
