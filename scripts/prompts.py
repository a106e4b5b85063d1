"""Snakemake script for rule `prompts`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.jobs.prompts import run

    run(
        snakemake.params.data,
        out_dir="results/prompts",
        manifest_path=snakemake.output.manifest,
        borderline=snakemake.params.borderline,
    )


run_job(snakemake, main)
