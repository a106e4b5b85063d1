"""Snakemake script for rule `ab_summary`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.jobs.ab_summary import run

    run(
        runs=snakemake.params.runs,
        settings=snakemake.params.settings,
        summary_path=snakemake.output.summary,
        runs_path=snakemake.output.runs,
        significance_path=snakemake.output.significance,
    )


run_job(snakemake, main, seed_key=None)
