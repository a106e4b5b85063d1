"""Snakemake script for rule `prompts`."""

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.jobs.prompts import run

    run(snakemake.params.data, out_dir="results/prompts", manifest_path=snakemake.output.manifest)


run_job(snakemake, main)
