"""Snakemake script for rule `safety_tune`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from pathlib import Path

    from bruno.config import settings_from_dict
    from bruno.io import atomic_directory, atomic_write_json
    from bruno.prompts import read_prompts
    from bruno.safety import SafetyTuningSettings, safety_tune

    settings = settings_from_dict(SafetyTuningSettings, snakemake.params.settings, "safety_tuning")
    log.info(
        "safety tuning %s -> %s (%s)",
        snakemake.params.model_path,
        snakemake.output[0],
        snakemake.params.label,
    )
    with atomic_directory(snakemake.output[0]) as tmp:
        summary = safety_tune(
            snakemake.params.model_path,
            tmp,
            read_prompts(snakemake.input.harmful),
            read_prompts(snakemake.input.harmless),
            settings,
            seed=snakemake.params.seed,
            threads=snakemake.threads,
            log=log.info,
        )
        summary["label"] = snakemake.params.label
        atomic_write_json(Path(tmp) / "training_summary.json", summary)


run_job(snakemake, main)
