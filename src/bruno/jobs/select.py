"""Stage `select`: choose the trial to export from the study snapshot -> best_trial.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from bruno.errors import BrunoError
from bruno.io import atomic_write_json
from bruno.search.select import SelectionSettings, select_trial
from bruno.search.study import STUDY_NAME


def run(
    study_path: str | Path, settings: SelectionSettings, variant: str, out_path: str | Path
) -> dict[str, Any]:
    storage = optuna.storages.RDBStorage(f"sqlite:///{study_path}")
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    objectives = study.user_attrs.get("objectives", ["kl_divergence", "refusal_rate"])
    confirmation = study.user_attrs.get("confirmation") if settings.confirm_prompts > 0 else None
    if settings.confirm_prompts > 0 and not confirmation:
        raise BrunoError(
            f"selection.confirm_prompts is {settings.confirm_prompts} but {study_path} holds no confirmation: "
            "re-run its search job (snakemake -R optimize) so that it confirms the candidates"
        )
    trial, selection = select_trial(
        study.trials, settings, objectives, study.user_attrs.get("base_extra_objectives"), confirmation
    )
    attrs = trial.user_attrs
    params = dict(trial.params)
    unused = [] if attrs.get("direction_index_used", True) else ["direction_index"]
    best = {
        "variant": variant,
        "trial_number": trial.number,
        "params": params,
        "unused_params": unused,
        "resolved": attrs["resolved"],
        "layer_weights": attrs["layer_weights"],
        "metrics_val": {
            **dict(zip(objectives, trial.values, strict=True)),
            "n_refusals": attrs.get("n_refusals"),
            "n_prompts": attrs.get("n_prompts"),
            "seconds": attrs.get("seconds"),
        },
        **({"metrics_confirmation": confirmation["trials"][str(trial.number)]} if confirmation else {}),
        "selection": selection,
        "study_fingerprint": study.user_attrs.get("fingerprint"),
    }
    atomic_write_json(out_path, best)
    return best
