rule report:
    input:
        base="results/eval/base/metrics.json",
        stages=expand("results/eval/{variant}/{stage}/metrics.json", variant=VARIANTS, stage=STAGES),
        best=expand("results/{variant}/best_trial.json", variant=VARIANTS),
    output:
        report(
            "results/report.html",
            caption="../report/report.rst",
            category="Comparison",
            labels={"variant": "all"},
        ),
    log:
        "logs/report/report.log",
    conda:
        "../envs/bruno.yaml"
    params:
        variants=list(VARIANTS),
        stages=STAGES,
        config=config,
    script:
        "../scripts/report.py"
