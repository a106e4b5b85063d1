"""Snakemake script for rules `evaluate_base` and `evaluate_stage`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job

SAME_AS_KEYS = ("model", "refusals", "mmlu", "hallucination", "metrics")


def main(snakemake, log):
    from bruno.config import settings_from_dict
    from bruno.evaluation.stage import EvaluationSettings
    from bruno.jobs.evaluate import run
    from bruno.model.loading import ModelSettings

    is_base = snakemake.rule == "evaluate_base"
    stage = "base" if is_base else f"{snakemake.wildcards.variant}/{snakemake.wildcards.stage}"
    prompt_paths = {"harmful": snakemake.input.harmful, "harmless": snakemake.input.harmless}
    if hasattr(snakemake.input, "borderline"):
        prompt_paths["borderline"] = snakemake.input.borderline
    run(
        stage=stage,
        model_path=snakemake.params.model_path if is_base else snakemake.input.model,
        model_settings=settings_from_dict(ModelSettings, snakemake.params.model, "model"),
        prompt_paths=prompt_paths,
        settings=settings_from_dict(EvaluationSettings, snakemake.params.evaluation, "evaluation"),
        outputs={
            key: getattr(snakemake.output, key) for key in ("refusals", "mmlu", "hallucination", "metrics")
        },
        base_logprobs_path=snakemake.output.logprobs if is_base else snakemake.input.base_logprobs,
        write_base_logprobs=is_base,
        seed=snakemake.params.seed,
        is_organism=snakemake.params.model["name"] == "organism",
        train_prompt_paths=(
            {"harmful": snakemake.input.harmful_train, "harmless": snakemake.input.harmless_train}
            if is_base
            else None
        ),
        same_model_as=(
            {key: getattr(snakemake.input, f"same_as_{key}") for key in SAME_AS_KEYS}
            if hasattr(snakemake.input, "same_as_model")
            else None
        ),
    )


run_job(snakemake, main)
