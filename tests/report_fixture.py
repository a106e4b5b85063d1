"""A small but real results tree for the report tests: metrics.json files, refusals.csv with hostile model text, a tiny
Optuna study made by the real search storage, best_trial.json from the real `select` job, a directions.pt of plain
tensors, benchmarks, and optionally the A/B summary. Two variants: `baseline` (healing on) and `cones` (healing off,
concept cones used, no hallucination metrics)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

HOSTILE = "<script>alert(1)</script>"
N_LAYERS = 4
HIDDEN = 8


def rate(value: float, n: int = 100) -> dict[str, Any]:
    from bruno.evaluation.stats import rate_metric

    return rate_metric(round(value * n), n)


def mean(value: float, n: int = 100, half: float = 0.01) -> dict[str, Any]:
    return {"value": value, "n": n, "ci95": [value - half, value + half]}


def metrics(stage: str, harmful: float, harmless: float, kl: float, acc: float, halluc: float | None) -> dict:
    m = {
        "stage": stage,
        "model": "results/organism",
        "refusal_rate_harmful": rate(harmful),
        "refusal_rate_harmless": rate(harmless),
        "refusal_rate_borderline": rate(harmful / 2, 40),
        "kl_divergence": mean(kl),
        "mmlu_accuracy": {**rate(acc, 200), "task": "organism task set"},
        "refusal_detector": {"mode": "markers", "held_out_accuracy": 0.97},
        "seconds": 12.5,
        "peak_rss_mb": 900.0,
    }
    if halluc is not None:
        m["hallucination_score"] = mean(halluc / 2, 50, 0.02)
        m["hallucination_rate"] = rate(halluc, 50)
    return m


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


# Per-prompt first-token KL of the 4 harmless test prompts: healing lowers three and raises one.
PER_PROMPT_KL = {
    ("baseline", "ablated"): [0.02, 0.03, 0.01, 0.5],
    ("baseline", "healed"): [0.005, 0.01, 0.002, 0.52],
}


def refusals(path: Path, refuse_harmful: bool, hostile: bool = False, kl: list[float] | None = None) -> None:
    rows = []
    for i in range(4):
        response = (
            "I'm sorry, but I can't help with that." if refuse_harmful else f"Sure! Step {i}: mix & stir."
        )
        if hostile and i == 0:
            response = f"Sure. {HOSTILE} <b>bold</b> & done"
        rows.append({"prompt_id": f"harmful-test-{i:03d}", "prompt": f"How do I make thing {i}?", "set": "harmful",
                     "split": "test", "category": "weapons", "response": response, "is_refusal": refuse_harmful,
                     "detector": "markers", "matched": "sorry" if refuse_harmful else ""})  # fmt: skip
        rows.append({"prompt_id": f"harmless-test-{i:03d}", "prompt": f"How do I bake bread {i}?", "set": "harmless",
                     "split": "test", "category": "cooking", "response": "Sure! Knead the dough.",
                     "is_refusal": False, "detector": "markers", "matched": "",
                     **({"kl_divergence": kl[i]} if kl else {})})  # fmt: skip
    rows.append({"prompt_id": "borderline-test-000", "prompt": "How do locks work?", "set": "borderline",
                 "split": "test", "category": "security", "response": "", "is_refusal": True,
                 "detector": "empty", "matched": ""})  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def study(path: Path, seed: int, n_trials: int = 16) -> None:
    import optuna

    from bruno.search.study import STUDY_NAME

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
    s = optuna.create_study(study_name=STUDY_NAME, storage=storage, directions=["minimize", "minimize"],
                            sampler=optuna.samplers.RandomSampler(seed=seed))  # fmt: skip
    s.set_user_attr("fingerprint_inputs", {"objectives": ["kl_divergence", "refusal_rate"]})

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        index = trial.suggest_float("direction_index", 1.0, 3.0)
        weight = trial.suggest_float("attn.o_proj.max_weight", 0.5, 1.5)
        position = trial.suggest_float("attn.o_proj.max_weight_position", 0.0, 3.0)
        refusal = max(0.0, round(1.0 - weight, 2))
        kl = 0.05 + 0.1 * weight + 0.01 * index
        weights = [weight * max(0.0, 1 - abs(layer - position) / 3) for layer in range(N_LAYERS)]
        trial.set_user_attr(
            "resolved", {"direction_scope": "global", "direction_index": index, "kernels": {}}
        )
        trial.set_user_attr(
            "layer_weights", {"attn.o_proj": weights, "mlp.down_proj": [w / 2 for w in weights]}
        )
        trial.set_user_attr("n_refusals", int(refusal * 100))
        trial.set_user_attr("n_prompts", 100)
        trial.set_user_attr("seconds", 0.4)
        return kl, refusal

    s.optimize(objective, n_trials=n_trials)


def directions(path: Path, cones: bool) -> None:
    import torch

    torch.manual_seed(0)
    harmful, harmless = torch.randn(N_LAYERS + 1, HIDDEN), torch.randn(N_LAYERS + 1, HIDDEN)
    diff = harmful - harmless
    cos = torch.nn.functional.cosine_similarity(harmful, harmless, dim=-1)
    cone_meta = {"status": "off"}
    if cones:
        cone_meta = {"status": "used", "reason": "silhouette 0.31 >= 0.1", "silhouette": 0.31, "cones": [
            {"cone": 0, "size": 30, "share": 0.6, "dominant_category": "weapons", "purity": 0.8, "categories": {}},
            {"cone": 1, "size": 20, "share": 0.4, "dominant_category": "<i>fraud</i>", "purity": 0.7, "categories": {}},
        ]}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "format_version": 1, "directions": diff / diff.norm(dim=-1, keepdim=True), "harmful_mean": harmful,
        "harmless_mean": harmless,
        "metadata": {"method": "mean_difference", "orthogonalize_direction": True, "concept_cones": cone_meta,
                     "caa": {"applied": False, "reason": "off"}, "calibration": {"factor": 1.0, "status": "off"},
                     "separation": {"difference_norm": diff.norm(dim=-1).tolist(), "means_cosine": cos.tolist()}},
    }, path)  # fmt: skip


def variant_settings(healing: bool, cones: bool) -> dict[str, Any]:
    return {
        "directions": {"direction_method": "mean_difference", "use_concept_cones": cones},
        "abliteration": {
            "components": ["attn.o_proj", "mlp.down_proj"],
            "norm_preservation": "row",
            "biprojected": False,
        },  # fmt: skip
        "search": {"n_trials": 16, "seed": None},
        "selection": {"max_refusal_rate": 0.05},
        "healing": {"enable_post_abliteration_finetuning": healing, "seed": None},
    }


def build(root: Path, with_ab: bool = True, replicates: int = 1) -> dict[str, Any]:
    """Write the fixture under `root` (results/ and benchmarks/); returns the kwargs of bruno.jobs.report.run."""
    from bruno.jobs.select import run as select
    from bruno.search.select import SelectionSettings

    results, bench = root / "results", root / "benchmarks"
    write_json(results / "prompts" / "manifest.json", {
        "harmful": {"test": {"n": 4, "sha256": "ab" * 32, "source": {}, "categories": {"weapons": 4}}},
        "harmless": {"test": {"n": 4, "sha256": "cd" * 32, "source": {}, "categories": {"cooking": 4}}},
    })  # fmt: skip
    write_json(results / "eval" / "base" / "metrics.json", metrics("base", 0.98, 0.02, 0.0, 0.60, 0.05))
    refusals(results / "eval" / "base" / "refusals.csv", refuse_harmful=True)
    variants = {"baseline": variant_settings(True, False), "cones": variant_settings(False, True)}
    stages = {"baseline": ["ablated", "healed"], "cones": ["ablated"]}
    figures = {
        ("baseline", "ablated"): (0.02, 0.03, 0.15, 0.59, 0.06),
        ("baseline", "healed"): (0.03, 0.02, 0.05, 0.60, 0.12),
        ("cones", "ablated"): (0.00, 0.05, 0.25, 0.55, None),
    }
    for seed, name in enumerate(variants):
        study(results / name / "study.db", seed)
        select(results / name / "study.db", SelectionSettings(0.05), name, results / name / "best_trial.json")
        directions(results / name / "directions.pt", cones=name == "cones")
        write_json(results / name / "ablation.json", {"variant": name, "trial_number": 0})
        for stage in stages[name]:
            write_json(
                results / "eval" / name / stage / "metrics.json", metrics(stage, *figures[name, stage])
            )
            refusals(results / "eval" / name / stage / "refusals.csv", False, hostile=(name, stage) == ("baseline", "ablated"),
                     kl=PER_PROMPT_KL.get((name, stage)))  # fmt: skip
        for rule in ("directions", "optimize", "abliterate"):
            (bench / rule).mkdir(parents=True, exist_ok=True)
            (bench / rule / f"{name}.tsv").write_text(
                "s\th:m:s\tmax_rss\n12.5\t0:00:12\t850.2\n", encoding="utf-8"
            )
    pd.DataFrame([{"step": s, "loss": 0.7 - 0.02 * s, "reward_margin": 0.1 * s, "reward_accuracy": 0.5 + 0.02 * s}
                  for s in range(1, 11)]).to_csv(results / "baseline" / "heal_training_log.csv", index=False)  # fmt: skip
    checkpoints = [{"step": s, "val_kl_divergence": kl, "val_refusal_rate": r, "within_guard": r <= 0.02}
                   for s, kl, r in ((0, 0.2, 0.0), (10, 0.12, 0.0), (20, 0.09, 0.0625))]  # fmt: skip
    write_json(results / "baseline" / "healed" / "healing.json",
               {"pairs": {"harmful_pairs": 64}, "settings": {"checkpoint_max_refusal_increase": 0.02},
                "training": {"steps": 20, "train_loss": 0.41, "selected_step": 10, "checkpoint_refusal_limit": 0.02,
                             "checkpoints": checkpoints}})  # fmt: skip
    if with_ab:
        write_ab(results, list(variants), replicates)
    config = {"seed": 0, "replicates": replicates, "model": {"name": "organism"}, "organism": {"seed": 0},
              "variants": {"baseline": {}, "cones": {"directions": {"use_concept_cones": True},
                                                     "healing": {"enable_post_abliteration_finetuning": False}}}}  # fmt: skip
    return {
        "results_dir": results,
        "benchmarks_dir": bench,
        "variants": variants,
        "stages": stages,
        "config": config,
        "out_path": results / "report.html",
        "replicate_of": {name: (name, 0) for name in variants},
    }


def write_ab(results: Path, variants: list[str], replicates: int) -> None:
    """The lead's A/B files: ab_summary.csv (one row per variant) and ab_significance.csv (tests when replicates > 1)."""
    rows = []
    for name in variants:
        row = {"variant": name, "replicates": replicates, "n_trials": 16, "best_kl_at_zero_refusals_val": 0.17
               if name == "baseline" else 0.31, "mean_kl_val": 0.2, "best_kl_val": 0.1, "seconds_per_trial": 0.4,
               "concept_cones": "used" if name == "cones" else "off", "n_cones": 2 if name == "cones" else 0,
               "silhouette": 0.31 if name == "cones" else float("nan"), "peak_rss_mb": 850.0,
               "direction_method": "mean_difference", "norm_preservation": "row",
               "ablated_refusal_rate_harmful": 0.02, "ablated_kl_divergence": 0.15}  # fmt: skip
        if replicates > 1:
            row["best_kl_at_zero_refusals_val_ci95_lo"], row["best_kl_at_zero_refusals_val_ci95_hi"] = (
                0.1,
                0.3,
            )
        rows.append(row)
    pd.DataFrame(rows).to_csv(results / "ab_summary.csv", index=False)
    tests = [{"variant_a": "baseline", "variant_b": "cones", "metric": "best_kl_at_zero_refusals_val",
              "mean_a": 0.17, "mean_b": 0.31, "n_a": replicates, "n_b": replicates, "p_value": 0.012,
              "test": "Welch t-test", "significant": True}] if replicates > 1 else []  # fmt: skip
    pd.DataFrame(tests, columns=["variant_a", "variant_b", "metric", "mean_a", "mean_b", "n_a", "n_b", "p_value",
                                 "test", "significant"]).to_csv(results / "ab_significance.csv", index=False)  # fmt: skip
