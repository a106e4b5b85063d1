"""Snakemake script for rule `directions`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.config import settings_from_dict
    from bruno.directions.mean import DirectionSettings
    from bruno.jobs.directions import run
    from bruno.model.loading import ModelSettings

    run(
        model_path=snakemake.params.model_path,
        model_settings=settings_from_dict(ModelSettings, snakemake.params.model, "model"),
        harmful_path=snakemake.input.harmful,
        harmless_path=snakemake.input.harmless,
        settings=settings_from_dict(DirectionSettings, snakemake.params.directions, "directions"),
        refusal_markers=snakemake.params.refusal_markers,
        seed=snakemake.params.seed,
        out_path=snakemake.output[0],
    )


run_job(snakemake, main)
