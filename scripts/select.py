"""Snakemake script for rule `select`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.config import settings_from_dict
    from bruno.jobs.select import run
    from bruno.search.select import SelectionSettings

    best = run(
        study_path=snakemake.input.study,
        settings=settings_from_dict(SelectionSettings, snakemake.params.selection, "selection"),
        variant=snakemake.wildcards.variant,
        out_path=snakemake.output[0],
    )
    log.info("selected trial %d: %s", best["trial_number"], best["metrics_val"])


run_job(snakemake, main, seed_key=None)
