"""Snakemake script for rules `evaluate_base` and `evaluate_stage`."""

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.config import settings_from_dict
    from bruno.evaluate import EvaluationSettings
    from bruno.jobs.evaluate import run
    from bruno.model import ModelSettings

    is_base = snakemake.rule == "evaluate_base"
    stage = "base" if is_base else f"{snakemake.wildcards.variant}/{snakemake.wildcards.stage}"
    run(
        stage=stage,
        model_path=snakemake.params.model_path if is_base else snakemake.input.model,
        model_settings=settings_from_dict(ModelSettings, snakemake.params.model, "model"),
        prompt_paths={"harmful": snakemake.input.harmful, "harmless": snakemake.input.harmless},
        settings=settings_from_dict(EvaluationSettings, snakemake.params.evaluation, "evaluation"),
        refusals_path=snakemake.output.refusals,
        metrics_path=snakemake.output.metrics,
        base_logprobs_path=snakemake.output.logprobs if is_base else snakemake.input.base_logprobs,
        write_base_logprobs=is_base,
    )


run_job(snakemake, main)
