"""Configuration: schema validation with defaults, variant resolution, and typed settings built from config sections.

The config is data: `config/schema.yaml` (JSON Schema, draft 2020-12, `additionalProperties: false`, a default for every
setting) is the single source of truth for names, types, ranges and defaults: the typed settings dataclasses take their
defaults from it (`schema_defaults`), and tests/test_settings_schema.py checks their names and types against it. A
variant is a name mapped to overrides that are deep-merged onto the base config; only the sections that do not change
what is evaluated as "base" may be overridden, so base evaluations can be shared by all variants. `stage_seed` is the
one place a stage's seed is derived from the master seed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from bruno.errors import BrunoError

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"

# Sections a variant may override. Everything else (model, data, evaluation, organism, seed) is shared, because the
# base model is evaluated once for all variants.
VARIANT_SECTIONS = ("directions", "abliteration", "search", "selection", "healing")

T = TypeVar("T")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` onto a copy of `base`; mappings merge, everything else replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _load_schema(schema_path: str | Path | None) -> dict[str, Any]:
    path = Path(schema_path) if schema_path else SCHEMA_PATH
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.cache
def _shipped_schema() -> dict[str, Any]:
    # Read once per process; callers get deep copies of what they take from it, so it is never mutated.
    return _load_schema(SCHEMA_PATH)


def _section_schema(section: str) -> dict[str, Any]:
    node = _shipped_schema()
    for part in section.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise BrunoError(f"config/schema.yaml has no section '{section}'.") from None
    return node


def schema_default(section: str, key: str) -> Any:
    """config/schema.yaml's default of `section.key` (a dotted section such as 'evaluation.mmlu'), as a fresh copy."""
    properties = _section_schema(section).get("properties", {})
    if key not in properties or "default" not in properties[key]:
        raise BrunoError(
            f"config/schema.yaml: no default for '{section}.{key}'; add the key with a `default:` to the schema."
        )
    return copy.deepcopy(properties[key]["default"])


def schema_defaults(section: str) -> Callable[[str], Any]:
    """Field maker for the settings dataclass of `section`: `batch_size: int = default("batch_size")` gives the field
    the schema's default (mutable defaults through a factory, so instances never share one list or dict)."""

    def default(key: str) -> Any:
        value = schema_default(section, key)
        if isinstance(value, (list, dict)):
            return dataclasses.field(default_factory=functools.partial(schema_default, section, key))
        return dataclasses.field(default=value)

    return default


def stage_seed(section_seed: int | None, master_seed: int, replicate: int = 0) -> int:
    """The seed of a stage (search, healing, safety tuning): its section's own `seed`, or the master seed when that
    is null; replicate k of a variant adds k. The only place a stage seed is derived (rules, jobs, report, bench)."""
    return (master_seed if section_seed is None else section_seed) + replicate


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    return f"config key '{where}': {error.message}"


def validate_config(
    config: dict[str, Any], schema_path: str | Path | None = None, context: str = "config"
) -> None:
    """Validate `config` in place against the schema and fill in defaults; raise BrunoError naming the key."""
    import jsonschema
    from snakemake.utils import validate as snakemake_validate

    schema = _load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        first = jsonschema.exceptions.best_match(errors)
        more = f" ({len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise BrunoError(
            f"Invalid {context}: {_describe(first)}{more}. See config/schema.yaml for allowed values."
        )
    # snakemake's validator fills `default:` values (nested ones too); run it on the already-valid config.
    snakemake_validate(config, str(Path(schema_path) if schema_path else SCHEMA_PATH), set_default=True)


def load_config(path: str | Path, schema_path: str | Path | None = None) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BrunoError(f"Config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    validate_config(config, schema_path, context=f"config {path}")
    return config


def resolve_variants(
    config: dict[str, Any], schema_path: str | Path | None = None
) -> dict[str, dict[str, Any]]:
    """Return {variant name: fully merged and validated config}; the base config must already be validated."""
    variants = config.get("variants") or {}
    if not variants:
        raise BrunoError(
            "config key 'variants': define at least one variant (e.g. `variants: {baseline: {}}`)."
        )
    base = {k: v for k, v in config.items() if k != "variants"}
    resolved = {}
    for name, overrides in variants.items():
        overrides = overrides or {}
        if not isinstance(overrides, Mapping):
            raise BrunoError(
                f"config key 'variants.{name}': expected a mapping of overrides, got {overrides!r}."
            )
        for key in overrides:
            if key not in VARIANT_SECTIONS:
                raise BrunoError(
                    f"config key 'variants.{name}.{key}': a variant may only override {', '.join(VARIANT_SECTIONS)} "
                    f"('{key}' is shared by all variants or unknown)."
                )
        merged = deep_merge(base, overrides)
        validate_config(merged, schema_path, context=f"variant '{name}'")
        merged.pop("variants", None)  # filled back in by the schema default; a variant has none
        resolved[name] = merged
    return resolved


def settings_from_dict(cls: type[T], values: Mapping[str, Any], section: str) -> T:
    """Build a settings dataclass from a config section; unknown keys are an error naming the section."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise BrunoError(f"config section '{section}': unknown key(s) {', '.join(unknown)}.")
    return cls(**{k: copy.deepcopy(v) for k, v in values.items()})


def expand_replicates(
    variants: dict[str, dict[str, Any]], replicates: int, seed: int
) -> dict[str, tuple[str, int]]:
    """Add replicate instances `{name}_rep{k}` (k = 1 .. replicates-1) of every variant, in place.

    A replicate differs only in its seeds: search (sampler, k-means, probe folds) and healing seeds are offset by k.
    Replicate 0 keeps the plain variant name, so one replicate changes nothing. Returns {instance: (variant, k)}."""
    origin: dict[str, tuple[str, int]] = {name: (name, 0) for name in variants}
    for name in list(variants):
        for k in range(1, replicates):
            instance = f"{name}_rep{k}"
            if instance in variants:
                raise BrunoError(
                    f"config key 'variants.{instance}': the name is reserved for replicate {k} of '{name}'."
                )
            merged = copy.deepcopy(variants[name])
            for section in ("search", "healing"):
                if section in merged:
                    merged[section]["seed"] = stage_seed(merged[section].get("seed"), seed, k)
            variants[instance] = merged
            origin[instance] = (name, k)
    return origin
