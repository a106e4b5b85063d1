"""Snakemake script for rule `share_directions`: a copy of the directions of a variant with the same settings."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    import shutil

    from bruno.io import atomic_path

    with atomic_path(snakemake.output[0]) as tmp:
        shutil.copyfile(snakemake.input[0], tmp)
    log.info(
        "variant %s has the directions settings of another variant: copied %s",
        snakemake.wildcards.variant,
        snakemake.input[0],
    )


run_job(snakemake, main)
