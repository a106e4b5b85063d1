"""Config validation and variant resolution: defaults filled, bad input named by key."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from bruno.config import deep_merge, load_config, resolve_variants, validate_config
from bruno.errors import BrunoError


def default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_is_valid_and_filled():
    config = default_config()
    validate_config(config)
    assert config["search"]["n_trials"] >= 1
    assert config["abliteration"]["norm_preservation"] in ("none", "frobenius", "row", "column")
    assert config["evaluation"]["refusal_markers"]  # schema default filled in
    variants = resolve_variants(config)
    assert variants
    for merged in variants.values():
        assert "variants" not in merged


def test_deep_merge_overrides_leaves_only():
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": [1, 2]}
    merged = deep_merge(base, {"a": {"c": {"d": 9}}, "f": [3]})
    assert merged == {"a": {"b": 1, "c": {"d": 9, "e": 3}}, "f": [3]}
    assert base["a"]["c"]["d"] == 2  # input untouched


def test_variant_overrides_are_merged_and_validated():
    config = default_config()
    config["variants"] = {"x": {"search": {"n_trials": 7}}, "y": None}
    validate_config(config)
    variants = resolve_variants(config)
    assert variants["x"]["search"]["n_trials"] == 7
    assert variants["y"]["search"]["n_trials"] == config["search"]["n_trials"]


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (lambda c: c.update(unknown_key=1), "unknown_key"),
        (lambda c: c["search"].update(n_trials="many"), "search.n_trials"),
        (lambda c: c["search"].update(n_trials=0), "search.n_trials"),
        (lambda c: c["selection"].update(max_refusal_rate=1.5), "selection.max_refusal_rate"),
        (lambda c: c["selection"].update(max_refusal_rate=-0.1), "selection.max_refusal_rate"),
        (lambda c: c["abliteration"].update(norm_preservation="sideways"), "abliteration.norm_preservation"),
        (lambda c: c["model"].update(device="tpu"), "model.device"),
    ],
)
def test_bad_config_names_the_key(mutate, key):
    config = default_config()
    mutate(config)
    with pytest.raises(BrunoError) as error:
        validate_config(config)
    assert key.split(".")[-1] in str(error.value)


def test_unknown_variant_override_key_is_named():
    config = default_config()
    config["variants"] = {"v1": {"search": {"n_trails": 3}}}
    validate_config(config)
    with pytest.raises(BrunoError, match="variant 'v1'.*n_trails"):
        resolve_variants(config)


def test_variant_may_not_override_shared_sections():
    config = default_config()
    config["variants"] = {"v1": {"model": {"name": "other"}}}
    validate_config(config)
    with pytest.raises(BrunoError, match="variants.v1.model"):
        resolve_variants(config)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(BrunoError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_schema_has_description_and_default_for_every_setting():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())

    def walk(node, path):
        if node.get("type") == "object" and "properties" in node:
            for name, child in node["properties"].items():
                child = copy.deepcopy(child)
                if "$ref" in child:
                    continue  # shared definitions are checked where defined
                assert "description" in child or child.get("type") == "object", (
                    f"{path}{name} lacks a description"
                )
                if child.get("type") != "object" or "properties" not in child:
                    assert "default" in child, f"{path}{name} lacks a default"
                walk(child, f"{path}{name}.")

    walk(schema, "")
