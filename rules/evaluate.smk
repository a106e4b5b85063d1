rule evaluate_base:
    input:
        unpack(get_evaluation_inputs),
        model=get_base_model(),
        harmful=prompt_file("harmful", "test"),
        harmless=prompt_file("harmless", "test"),
        # the response prefix is resolved from the train prompts, as the directions job does
        harmful_train=prompt_file("harmful", "train"),
        harmless_train=prompt_file("harmless", "train"),
    output:
        refusals="results/eval/base/refusals.csv",
        mmlu="results/eval/base/mmlu.csv",
        hallucination="results/eval/base/hallucination.csv",
        metrics=report(
            "results/eval/base/metrics.json",
            caption="../report/metrics.rst",
            category="Evaluation",
            labels={"model": "base", "stage": "base"},
        ),
        logprobs="results/eval/base/harmless_logprobs.pt",
    log:
        "logs/evaluate/base.log",
    benchmark:
        "benchmarks/evaluate/base.tsv"
    priority: JOB_PRIORITY["evaluate_base"]
    conda:
        "../envs/bruno.yaml"
    threads: MODEL_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    params:
        model_path=get_model_path,
        model=config["model"],
        evaluation=get_evaluation_settings(),
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"


rule evaluate_stage:
    input:
        unpack(get_evaluation_inputs),
        unpack(get_same_model_candidate),
        model=get_stage_model,
        harmful=prompt_file("harmful", "test"),
        harmless=prompt_file("harmless", "test"),
        base_logprobs="results/eval/base/harmless_logprobs.pt",
    output:
        refusals="results/eval/{variant}/{stage}/refusals.csv",
        mmlu="results/eval/{variant}/{stage}/mmlu.csv",
        hallucination="results/eval/{variant}/{stage}/hallucination.csv",
        metrics=report(
            "results/eval/{variant}/{stage}/metrics.json",
            caption="../report/metrics.rst",
            category="Evaluation",
            labels={"model": "{variant}", "stage": "{stage}"},
        ),
    log:
        "logs/evaluate/{variant}_{stage}.log",
    benchmark:
        "benchmarks/evaluate/{variant}_{stage}.tsv"
    conda:
        "../envs/bruno.yaml"
    threads: MODEL_JOB_THREADS
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=1,
    params:
        model=config["model"],
        evaluation=get_evaluation_settings(),
        seed=config["seed"],
    script:
        "../scripts/evaluate.py"
