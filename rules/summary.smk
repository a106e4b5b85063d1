rule ab_summary:
    input:
        studies=expand("results/{variant}/study.db", variant=VARIANTS),
        directions=expand("results/{variant}/directions.pt", variant=VARIANTS),
        metrics=get_stage_metrics(),
    output:
        summary=report(
            "results/ab_summary.csv",
            caption="../report/ab_summary.rst",
            category="Comparison",
            labels={"variant": "all", "table": "A/B summary"},
        ),
        runs="results/ab_runs.csv",
        significance="results/ab_significance.csv",
    log:
        "logs/ab_summary/ab_summary.log",
    benchmark:
        "benchmarks/ab_summary/ab_summary.tsv"
    localrule: True
    conda:
        "../envs/bruno.yaml"
    params:
        runs=get_ab_runs(),
        settings=get_ab_settings(),
    script:
        "../scripts/ab_summary.py"
