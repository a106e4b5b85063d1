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
    wildcard_constraints:
        variant=directions_variants(computed=True),
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
        directions=variant_section("directions"),
        refusal_markers=get_directions_refusal_markers,
        seed=variant_seed,
    script:
        "../scripts/directions.py"


# A variant whose directions params equal an earlier variant's (DIRECTIONS_SOURCE) copies its directions instead of
# computing the same file again: the directions job is deterministic for its params, base model and prompts.
rule share_directions:
    input:
        get_shared_directions,
    output:
        "results/{variant}/directions.pt",
    log:
        "logs/directions/{variant}.log",
    benchmark:
        "benchmarks/share_directions/{variant}.tsv"
    wildcard_constraints:
        variant=directions_variants(computed=False),
    priority: JOB_PRIORITY["search"]
    localrule: True
    conda:
        "../envs/bruno.yaml"
    script:
        "../scripts/share_directions.py"
