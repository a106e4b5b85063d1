"""Snakemake script for rule `organism`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from pathlib import Path

    from bruno.config import settings_from_dict
    from bruno.io import atomic_directory, atomic_write_json
    from bruno.organism import OrganismSettings, train_organism

    settings = settings_from_dict(OrganismSettings, snakemake.params.organism, "organism")
    with atomic_directory(snakemake.output[0]) as tmp:
        summary = train_organism(
            Path(tmp), settings, Path(snakemake.params.data_dir), threads=snakemake.threads, log=log.info
        )
        atomic_write_json(Path(tmp) / "training_summary.json", summary)


run_job(snakemake, main, seed_key=None)
