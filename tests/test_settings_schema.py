"""config/schema.yaml and the typed settings dataclasses describe the same settings: for every schema section with a
dataclass, the same field names, a type hint that admits exactly the schema's JSON types, and the schema's default.

The dataclasses read their defaults from the schema (`bruno.config.schema_defaults`), so a default written into a
dataclass by hand, a field added on one side only or a type changed on one side fails here. The schema is read as plain
YAML, independently of `bruno.config`."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from bruno.config import schema_default
from bruno.directions.mean import DirectionSettings
from bruno.edit.plan import AbliterationSettings
from bruno.errors import BrunoError
from bruno.evaluation.capability import MMLUSettings
from bruno.evaluation.hallucination import HallucinationSettings
from bruno.evaluation.refusal import (
    DEFAULT_EVASIVE_PATTERNS,
    DEFAULT_REFUSAL_MARKERS,
    DEFAULT_SOFT_REFUSAL_MARKERS,
    NeuralDetectorSettings,
)
from bruno.evaluation.stage import EvaluationSettings
from bruno.heal.dpo import HealingSettings
from bruno.model.loading import ModelSettings
from bruno.organism.settings import OrganismSettings
from bruno.safety.settings import SafetyTuningSettings
from bruno.search.select import SelectionSettings
from bruno.search.space import SearchSettings

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))

# Every schema section (dotted path) that a job reads through a settings dataclass.
SETTINGS = {
    "model": ModelSettings,
    "organism": OrganismSettings,
    "safety_tuning": SafetyTuningSettings,
    "directions": DirectionSettings,
    "abliteration": AbliterationSettings,
    "search": SearchSettings,
    "selection": SelectionSettings,
    "healing": HealingSettings,
    "evaluation": EvaluationSettings,
    "evaluation.neural_detector": NeuralDetectorSettings,
    "evaluation.mmlu": MMLUSettings,
    "evaluation.hallucination": HallucinationSettings,
}
# Object sections of the schema that have no dataclass of their own, and why.
# (Shared types under $defs, such as prompt sources and kernel ranges, are values of settings, not sections.)
NO_DATACLASS = {
    "data": "prompt-source specs, resolved by rule `prompts` (bruno.prompts) before any model job",
    "search.ranges": "kernel ranges per component, a mapping in SearchSettings resolved by bruno.search.space.SearchSpace",
    "search.warm_start": "a mapping in SearchSettings, read by bruno.search.space.warm_start_values",
}
# (section, field) pairs that may exist on one side only, and why. Keep it short; none is needed today.
ONE_SIDED: dict[tuple[str, str], str] = {}

JSON_TYPES: dict[str, type] = {
    "integer": int,
    "number": float,
    "string": str,
    "boolean": bool,
    "array": list,
    "object": dict,
    "null": type(None),
}


def section_schema(section: str) -> dict[str, Any]:
    node = SCHEMA
    for part in section.split("."):
        node = node["properties"][part]
    return node


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (its own keys, such as `default`, win)."""
    if "$ref" not in node:
        return node
    target: Any = SCHEMA
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**resolve(target), **{k: v for k, v in node.items() if k != "$ref"}}


def schema_alternatives(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema as a list of single-type alternatives (anyOf and type lists split up)."""
    node = resolve(node)
    if "type" not in node:  # a union: anyOf (a oneOf beside `type` only constrains required keys)
        return [alt for sub in node.get("anyOf", node.get("oneOf")) for alt in schema_alternatives(sub)]
    kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
    return [{**node, "type": kind} for kind in kinds]


def hint_alternatives(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return list(typing.get_args(hint))
    return [hint]


def mismatches(node: dict[str, Any], hint: Any, where: str) -> list[str]:
    """How the type hint differs from the schema: the same set of JSON types, and the same item types of arrays."""
    if hint is Any:
        return []
    schema_alts = schema_alternatives(node)
    hints = {}
    for alt in hint_alternatives(hint):
        origin = typing.get_origin(alt) or alt
        hints[{tuple: list}.get(origin, origin)] = alt
    schema_types = {JSON_TYPES[alt["type"]]: alt for alt in schema_alts}
    if set(schema_types) != set(hints):
        names = sorted(alt["type"] for alt in schema_alts)
        return [f"{where}: schema types {names}, type hint {hint}"]
    problems = []
    array, hinted = schema_types.get(list), hints.get(list)
    if array is not None and "items" in array and typing.get_args(hinted):
        problems += mismatches(array["items"], typing.get_args(hinted)[0], f"{where}[]")
    return problems


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("section", sorted(SETTINGS))
def test_settings_dataclass_matches_its_schema_section(section: str):
    cls = SETTINGS[section]
    properties = section_schema(section)["properties"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems = [
        f"{section}.{name}: only in {'the schema' if name in properties else cls.__name__}"
        for name in sorted(set(properties) ^ set(fields))
        if (section, name) not in ONE_SIDED
    ]
    for name in sorted(set(properties) & set(fields)):
        problems += mismatches(properties[name], hints[name], f"{section}.{name}")
        schema_value, value = properties[name]["default"], default_of(fields[name])
        if value != schema_value or type(value) is not type(schema_value):
            problems.append(
                f"{section}.{name}: schema default {schema_value!r}, {cls.__name__} default {value!r}"
            )
    assert not problems, "\n".join(problems)


def test_every_object_section_of_the_schema_is_covered():
    """A new config section gets a settings dataclass (or a reason in NO_DATACLASS), so it cannot drift unchecked."""

    def sections(node: dict[str, Any], prefix: str) -> list[str]:
        found = []
        for name, sub in node.get("properties", {}).items():
            if sub.get("type") == "object" and "properties" in sub:
                path = f"{prefix}{name}"
                found += [path, *sections(sub, f"{path}.")]
        return found

    assert sorted(sections(SCHEMA, "")) == sorted([*SETTINGS, *NO_DATACLASS])


def test_defaults_are_fresh_copies():
    """Mutable defaults come from a factory: one instance's list is not another's, nor the schema's."""
    first, second = EvaluationSettings(), EvaluationSettings()
    first.refusal_markers.append("changed")
    assert "changed" not in second.refusal_markers
    assert "changed" not in schema_default("evaluation", "refusal_markers")


def test_marker_constants_are_the_schema_defaults():
    assert (
        list(DEFAULT_REFUSAL_MARKERS)
        == section_schema("evaluation")["properties"]["refusal_markers"]["default"]
    )
    assert len(DEFAULT_REFUSAL_MARKERS) == 33  # heretic's list
    assert list(DEFAULT_SOFT_REFUSAL_MARKERS) == schema_default("evaluation", "soft_refusal_markers")
    assert list(DEFAULT_EVASIVE_PATTERNS) == schema_default("evaluation", "evasive_patterns")


def test_a_key_without_a_schema_default_is_named():
    with pytest.raises(BrunoError, match=r"model\.no_such_key"):
        schema_default("model", "no_such_key")
    with pytest.raises(BrunoError, match="no section 'no_such_section'"):
        schema_default("no_such_section", "seed")
