"""Snakemake script for rule `report`."""

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.jobs.report import run

    run(
        base_metrics=snakemake.input.base,
        variants=snakemake.params.variants,
        stages=snakemake.params.stages,
        config=snakemake.params.config,
        out_path=snakemake.output[0],
    )


run_job(snakemake, main, seed_key=None)
