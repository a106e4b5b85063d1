"""The search space over abliteration parameters, its warm start and the `search` settings.

Parameter names follow heretic: `direction_scope`, `direction_index`, and per component (`attn.o_proj`,
`mlp.down_proj`) `max_weight`, `max_weight_position`, `min_weight` (a fraction of max_weight), `min_weight_distance`.
Ranges are configured as fractions of the last layer index, so one config suits models of any depth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from bruno.config import schema_defaults
from bruno.edit.plan import AblationParams, ComponentKernel
from bruno.errors import BrunoError
from bruno.search.study import STUDY_NAME

KERNEL_PARAMS = ("max_weight", "max_weight_position", "min_weight", "min_weight_distance")


# Generic known-good starting points, in fractions of the last layer index (positions, distances, direction index) and
# absolute weights; clipped into the configured ranges. Add model-specific ones under search.warm_start.trials.
PRESETS: tuple[dict[str, Any], ...] = (
    {
        "scope": "global",
        "index": 0.8,
        "attn.o_proj": (1.0, 0.8, 0.6, 0.5),
        "mlp.down_proj": (0.0, 0.8, 0.0, 0.1),
    },
    {
        "scope": "global",
        "index": 0.65,
        "attn.o_proj": (1.0, 0.7, 0.3, 0.4),
        "mlp.down_proj": (0.8, 0.7, 0.3, 0.4),
    },
    {
        "scope": "per layer",
        "index": 0.7,
        "attn.o_proj": (0.9, 0.75, 0.5, 0.6),
        "mlp.down_proj": (0.5, 0.75, 0.5, 0.6),
    },
)


_default = schema_defaults("search")


@dataclass(frozen=True)
class SearchSettings:
    n_trials: int = _default("n_trials")
    n_startup_trials: int = _default("n_startup_trials")
    n_ei_candidates: int = _default("n_ei_candidates")
    seed: int | None = _default("seed")
    direction_scopes: list[str] = _default("direction_scopes")
    direction_index: list[float] = _default("direction_index")
    ranges: dict[str, dict[str, list[float]]] = _default("ranges")
    warm_start: dict[str, Any] = _default("warm_start")
    n_refusal_prompts: int = _default("n_refusal_prompts")
    n_kl_prompts: int = _default("n_kl_prompts")
    max_new_tokens: int = _default("max_new_tokens")
    batch_size: int = _default("batch_size")
    max_failed_trials: int = _default("max_failed_trials")
    optimize_workers: int = _default("optimize_workers")
    parallel_trials: int = _default("parallel_trials")
    refusal_early_stop: bool = _default("refusal_early_stop")
    prefix_reuse_mb: float = _default("prefix_reuse_mb")
    refusal_constraint: float | None = _default("refusal_constraint")
    use_hallucination_detection: bool = _default("use_hallucination_detection")
    hallucination_check_n_questions: int = _default("hallucination_check_n_questions")
    hallucination_n_samples: int = _default("hallucination_n_samples")
    use_capability_objective: bool = _default("use_capability_objective")
    capability_check_n_questions: int = _default("capability_check_n_questions")


@dataclass(frozen=True)
class SearchSpace:
    """Absolute ranges for one model depth, resolved from the fractional config ranges."""

    n_layers: int
    components: tuple[str, ...]
    direction_scopes: tuple[str, ...]
    direction_index: tuple[float, float]
    kernels: dict[str, dict[str, tuple[float, float]]]

    @classmethod
    def resolve(cls, settings: SearchSettings, n_layers: int, components: list[str]) -> SearchSpace:
        last = max(n_layers - 1, 0)

        def scaled(pair: list[float], floor: float | None = None) -> tuple[float, float]:
            lo, hi = pair[0] * last, pair[1] * last
            if floor is not None:
                lo, hi = max(lo, floor), max(hi, floor)
            return (float(lo), float(hi))

        kernels = {}
        for component in components:
            if component not in settings.ranges:
                raise BrunoError(f"config key 'search.ranges': no ranges for component '{component}'.")
            r = settings.ranges[component]
            kernels[component] = {
                "max_weight": (float(r["max_weight"][0]), float(r["max_weight"][1])),
                "max_weight_position": scaled(r["max_weight_position"]),
                "min_weight": (float(r["min_weight"][0]), float(r["min_weight"][1])),
                "min_weight_distance": scaled(r["min_weight_distance"], floor=1.0),
            }
        return cls(
            n_layers,
            tuple(components),
            tuple(settings.direction_scopes),
            scaled(settings.direction_index),
            kernels,
        )

    def distributions(self) -> dict[str, Any]:
        dists: dict[str, Any] = {}
        if len(self.direction_scopes) > 1:
            dists["direction_scope"] = CategoricalDistribution(list(self.direction_scopes))
        if "global" in self.direction_scopes:
            dists["direction_index"] = FloatDistribution(*self.direction_index)
        for component, ranges in self.kernels.items():
            for name in KERNEL_PARAMS:
                dists[f"{component}.{name}"] = FloatDistribution(*ranges[name])
        return dists

    def describe(self) -> dict[str, Any]:
        return {name: repr(dist) for name, dist in self.distributions().items()}

    def to_params(self, values: Mapping[str, Any], weight_scale: float = 1.0) -> AblationParams:
        """Optuna parameter values -> AblationParams (clamps max_weight at 0; min_weight is a fraction of max)."""
        scope = values.get("direction_scope", self.direction_scopes[0])
        index = values.get("direction_index") if scope == "global" else None
        kernels = {}
        for component in self.components:
            max_weight = max(0.0, float(values[f"{component}.max_weight"]))
            kernels[component] = ComponentKernel(
                max_weight=max_weight,
                max_weight_position=float(values[f"{component}.max_weight_position"]),
                min_weight=float(values[f"{component}.min_weight"]) * max_weight,
                min_weight_distance=float(values[f"{component}.min_weight_distance"]),
            )
        return AblationParams(scope, index, kernels, weight_scale)

    def full_strength(self) -> dict[str, Any]:
        """Warm-start point: the latest direction the range allows, weight 1 on every layer of every component."""

        def clip(value: float, bounds: tuple[float, float]) -> float:
            return min(max(value, bounds[0]), bounds[1])

        values: dict[str, Any] = {}
        if len(self.direction_scopes) > 1:
            values["direction_scope"] = (
                "global" if "global" in self.direction_scopes else self.direction_scopes[0]
            )
        if "global" in self.direction_scopes:
            values["direction_index"] = self.direction_index[1]
        for component, ranges in self.kernels.items():
            position = clip((self.n_layers - 1) / 2, ranges["max_weight_position"])
            values[f"{component}.max_weight"] = clip(1.0, ranges["max_weight"])
            values[f"{component}.max_weight_position"] = position
            values[f"{component}.min_weight"] = clip(1.0, ranges["min_weight"])
            values[f"{component}.min_weight_distance"] = ranges["min_weight_distance"][1]
        return values


def _clip(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def preset_values(space: SearchSpace, preset: Mapping[str, Any]) -> dict[str, Any]:
    last = max(space.n_layers - 1, 1)
    values: dict[str, Any] = {}
    if len(space.direction_scopes) > 1:
        values["direction_scope"] = (
            preset["scope"] if preset["scope"] in space.direction_scopes else space.direction_scopes[0]
        )
    if "global" in space.direction_scopes:
        values["direction_index"] = _clip(preset["index"] * last, space.direction_index)
    for component, ranges in space.kernels.items():
        weight, position, min_fraction, distance = preset[component]
        values[f"{component}.max_weight"] = _clip(weight, ranges["max_weight"])
        values[f"{component}.max_weight_position"] = _clip(position * last, ranges["max_weight_position"])
        values[f"{component}.min_weight"] = _clip(min_fraction, ranges["min_weight"])
        values[f"{component}.min_weight_distance"] = _clip(distance * last, ranges["min_weight_distance"])
    return values


def previous_best(space: SearchSpace, study_path: str | Path, n: int) -> list[dict[str, Any]]:
    """The `n` best COMPLETE trials (fewest refusals, then lowest KL) of an earlier study, clipped into this space."""
    path = Path(study_path)
    if not path.is_file():
        raise BrunoError(f"config key 'search.warm_start.previous_study': file not found: {path}")
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{path}")
    trials = sorted(
        study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: (t.values[1], t.values[0], t.number)
    )
    dists = space.distributions()
    chosen = []
    for trial in trials[:n]:
        values = {}
        for name, dist in dists.items():
            if name not in trial.params:
                continue
            value = trial.params[name]
            if isinstance(dist, CategoricalDistribution):
                if value in dist.choices:
                    values[name] = value
            else:
                values[name] = _clip(float(value), (dist.low, dist.high))
        chosen.append(values)
    return chosen


def warm_start_values(space: SearchSpace, settings: SearchSettings) -> list[dict[str, Any]]:
    """Parameter sets to enqueue in a new study, in order: full strength, presets / previous study, explicit ones."""
    warm = settings.warm_start
    values = [space.full_strength()] if warm.get("full_strength", True) else []
    if warm.get("use_warm_start_params", False):
        n = warm.get("warm_start_n_trials", 3)
        if warm.get("previous_study"):
            values += previous_best(space, warm["previous_study"], n)
        else:
            values += [preset_values(space, p) for p in PRESETS[:n]]
    known = set(space.distributions())
    for extra in warm.get("trials", []):
        unknown = sorted(set(extra) - known)
        if unknown:
            raise BrunoError(
                f"config key 'search.warm_start.trials': unknown parameter(s) {unknown}; known: {sorted(known)}."
            )
        values.append(dict(extra))
    return values


def sample(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    values = {}
    for name, dist in space.distributions().items():
        if isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, dist.choices)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high)
    return values
