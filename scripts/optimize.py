"""Snakemake script for rule `optimize`."""

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.config import settings_from_dict
    from bruno.jobs.optimize import run
    from bruno.model import ModelSettings
    from bruno.plan import AbliterationSettings
    from bruno.search import SearchSettings

    run(
        model_path=snakemake.params.model_path,
        model_settings=settings_from_dict(ModelSettings, snakemake.params.model, "model"),
        directions_path=snakemake.input.directions,
        harmful_val_path=snakemake.input.harmful,
        harmless_val_path=snakemake.input.harmless,
        settings=settings_from_dict(SearchSettings, snakemake.params.search, "search"),
        abliteration=settings_from_dict(AbliterationSettings, snakemake.params.abliteration, "abliteration"),
        refusal_markers=snakemake.params.refusal_markers,
        seed=snakemake.params.seed,
        work_db=snakemake.params.work_db,
        out_db=snakemake.output.study,
    )


run_job(snakemake, main)
