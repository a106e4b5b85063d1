rule report:
    input:
        base="results/eval/base/metrics.json",
        stages=get_stage_metrics(),
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
        stages={variant: variant_stages(variant) for variant in VARIANTS},
        config=config,
    script:
        "../scripts/report.py"
