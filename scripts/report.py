"""Snakemake script for rule `report`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.jobs.report import run

    run(
        results_dir=snakemake.params.results_dir,
        benchmarks_dir=snakemake.params.benchmarks_dir,
        variants=snakemake.params.variants,
        stages=snakemake.params.stages,
        config=snakemake.params.config,
        out_path=snakemake.output[0],
        replicate_of=snakemake.params.replicate_of,
        workflow_dir=snakemake.params.workflow_dir,
    )


run_job(snakemake, main, seed_key=None)
