rule report:
    input:
        unpack(get_report_inputs),
    output:
        report(
            "results/report.html",
            caption="../report/report.rst",
            category="Comparison",
            labels={"variant": "all"},
        ),
    log:
        "logs/report/report.log",
    benchmark:
        "benchmarks/report/report.tsv"
    conda:
        "../envs/bruno.yaml"
    params:
        # the directory of report.html: the results tree it reads (and links into, relatively)
        results_dir=lambda wildcards, output: os.path.dirname(output[0]),
        benchmarks_dir="benchmarks",
        # resolved settings of every variant instance, in config order (the page's variant order)
        variants=VARIANTS,
        replicate_of=REPLICATE_OF,
        stages={variant: variant_stages(variant) for variant in VARIANTS},
        config=config,
        workflow_dir=workflow.basedir,
    script:
        "../scripts/report.py"
