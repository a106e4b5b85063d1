"""Snakemake script for rule `heal`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.config import settings_from_dict
    from bruno.heal.dpo import HealingSettings
    from bruno.jobs.heal import run
    from bruno.model.loading import ModelSettings

    run(
        model_path=snakemake.params.model_path,
        model_settings=settings_from_dict(ModelSettings, snakemake.params.model, "model"),
        ablated_path=snakemake.input.ablated,
        harmful_train_path=snakemake.input.harmful,
        harmless_train_path=snakemake.input.harmless,
        settings=settings_from_dict(HealingSettings, snakemake.params.healing, "healing"),
        refusal_markers=snakemake.params.refusal_markers,
        master_seed=snakemake.params.seed,
        out_dir=snakemake.output.model,
        pairs_path=snakemake.output.pairs,
        training_log_path=snakemake.output.training_log,
        harmful_val_path=snakemake.input.harmful_val,
        harmless_val_path=snakemake.input.harmless_val,
    )


run_job(snakemake, main)
