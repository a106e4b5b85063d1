rule directions:
    input:
        model=get_base_model(),
        harmful=prompt_file("harmful", "train"),
        harmless=prompt_file("harmless", "train"),
    output:
        "results/{variant}/directions.pt",
    log:
        "logs/directions/{variant}.log",
    benchmark:
        "benchmarks/directions/{variant}.tsv"
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
        directions=variant_section("directions"),
        refusal_markers=get_directions_refusal_markers,
        seed=variant_seed,
    script:
        "../scripts/directions.py"
