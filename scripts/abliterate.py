"""Snakemake script for rule `abliterate`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.config import settings_from_dict
    from bruno.edit.plan import AbliterationSettings
    from bruno.jobs.abliterate import run
    from bruno.model.loading import ModelSettings

    run(
        model_path=snakemake.params.model_path,
        model_settings=settings_from_dict(ModelSettings, snakemake.params.model, "model"),
        directions_path=snakemake.input.directions,
        best_trial_path=snakemake.input.best,
        abliteration=settings_from_dict(AbliterationSettings, snakemake.params.abliteration, "abliteration"),
        out_dir=snakemake.output.model,
        edit_path=snakemake.output.edit,
    )


run_job(snakemake, main, seed_key=None)
