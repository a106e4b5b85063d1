# The search, on a journal-file study (results/{variant}/optuna/journal.log). With search.optimize_workers = 1 the
# `optimize` job runs the whole study and writes the SQLite snapshot study.db. With N > 1, `init_study` creates the
# study once, N `optimize_worker` jobs share it (e.g. one GPU job each on a cluster), and `optimize` only writes the
# snapshot: one job (its params, script and threads) on other inputs and outputs, hence `use rule optimize`. The working
# study is never an `output:`, so a failed or killed job never deletes its trials: rerunning resumes it. With
# selection.confirm_prompts > 0 the job that writes the snapshot first confirms the candidates
# (bruno.search.confirm).


rule optimize:
    input:
        unpack(get_optimize_inputs),
    output:
        study="results/{variant}/study.db",
    log:
        "logs/optimize/{variant}.log",
    benchmark:
        "benchmarks/optimize/{variant}.tsv"
    priority: JOB_PRIORITY["search"]
    conda:
        "../envs/bruno.yaml"
    threads: MODEL_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=optimize_gpus,
    params:
        journal="results/{variant}/optuna/journal.log",
        model_path=get_model_path,
        model=config["model"],
        search=variant_section("search"),
        abliteration=variant_section("abliteration"),
        refusal_markers=config["evaluation"]["refusal_markers"],
        evaluation=get_search_evaluation,
        confirmation=get_confirmation,
        seed=variant_seed,
    script:
        "../scripts/optimize.py"


use rule optimize as init_study with:
    input:
        unpack(get_search_inputs),
    output:
        touch("results/{variant}/optuna/init.done"),
    log:
        "logs/init_study/{variant}.log",
    benchmark:
        "benchmarks/init_study/{variant}.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
        gpu=1,


use rule optimize as optimize_worker with:
    input:
        unpack(get_search_inputs),
        init="results/{variant}/optuna/init.done",
    output:
        touch("results/{variant}/optuna/worker{worker}.done"),
    log:
        "logs/optimize_worker/{variant}_{worker}.log",
    benchmark:
        "benchmarks/optimize_worker/{variant}_{worker}.tsv"
    resources:
        mem_mb=8000,
        runtime=720,
        gpu=1,


rule select:
    input:
        study="results/{variant}/study.db",
    output:
        report(
            "results/{variant}/best_trial.json",
            caption="../report/best_trial.rst",
            category="Search",
            labels={"variant": "{variant}", "file": "best_trial.json"},
        ),
    log:
        "logs/select/{variant}.log",
    benchmark:
        "benchmarks/select/{variant}.tsv"
    priority: JOB_PRIORITY["search"]
    localrule: True
    conda:
        "../envs/bruno.yaml"
    params:
        selection=variant_section("selection"),
    script:
        "../scripts/select.py"
