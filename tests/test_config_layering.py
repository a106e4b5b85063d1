"""A config given with --configfile is the whole run, checked from the repository root as users run it: the DAG holds
exactly the variants the file names, and every variant's settings are the file's values plus the schema defaults, with
nothing of the embedded organism default (config/config.yaml) leaking in. Without --configfile the organism default
runs, with --config values on top."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import procs
import pytest
import yaml
from workflow_rules import REPO, dry_run

from bruno.config import load_config, resolve_variants

EXAMPLES = sorted((REPO / "config" / "examples").glob("*.yaml"))
ORGANISM = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())

# The workflow's own resolution, read from the loaded Snakefile (Snakemake's API; nothing runs, nothing is written).
RESOLVE = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, ResourceSettings

configfiles, overrides = json.loads(sys.argv[1]), json.loads(sys.argv[2])
with SnakemakeApi() as api:
    workflow = api.workflow(
        resource_settings=ResourceSettings(cores=1),
        config_settings=ConfigSettings(configfiles=[Path(p) for p in configfiles], config=overrides),
        snakefile=Path("Snakefile"),
        workdir=Path.cwd(),
    )._workflow
    print("RESOLVED" + json.dumps(workflow.globals["VARIANTS"], default=str))
"""


def workflow_variants(*configfiles: Path, overrides: dict | None = None) -> dict:
    """{variant: resolved settings} as the Snakefile resolves them from the repository root."""
    args = [json.dumps([str(p) for p in configfiles]), json.dumps(overrides or {})]
    env_offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = procs.run([sys.executable, "-c", RESOLVE, *args], cwd=REPO, timeout=180, env=_env(env_offline))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return json.loads(result.stdout.split("RESOLVED", 1)[1])


def _env(extra: dict) -> dict:
    import os

    return {**os.environ, **extra}


def schema_default(*keys: str):
    node = SCHEMA
    for key in keys[:-1]:
        node = node["properties"][key]
    return node["properties"][keys[-1]]["default"]


def dag_variants(run) -> dict[str, set[str]]:
    """{rule: the variants of its jobs} for the per-variant rules of a dry run (a variant's directions are computed by
    rule `directions` or copied by `share_directions` from a variant with the same settings)."""
    found: dict[str, set[str]] = {}
    for rule in ("directions", "optimize", "select", "abliterate"):
        for block in run.blocks.get(rule, []) + (
            run.blocks.get("share_directions", []) if rule == "directions" else []
        ):
            match = re.search(r"wildcards: variant=([\w-]+)", block)
            assert match, block
            found.setdefault(rule, set()).add(match[1])
    return found


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_dag_from_the_repository_root_holds_exactly_its_variants(path: Path):
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    run = dry_run(REPO, "--cores", "1", "--configfile", str(path.relative_to(REPO)), env=offline)
    named = set(yaml.safe_load(path.read_text())["variants"])
    assert dag_variants(run) == dict.fromkeys(("directions", "optimize", "select", "abliterate"), named)
    assert "organism" not in run.jobs and "heal" not in run.jobs


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_settings_are_the_file_plus_schema_defaults(path: Path):
    resolved = workflow_variants(path.relative_to(REPO))
    expected = resolve_variants(load_config(path))  # the file alone on the schema
    assert resolved == json.loads(json.dumps(expected, default=str))
    file = yaml.safe_load(path.read_text())
    for settings in resolved.values():
        # keys the organism default sets differently: each is the file's value or the schema's default
        assert settings["abliteration"]["norm_preservation"] == file["abliteration"]["norm_preservation"]
        assert settings["healing"]["dpo_learning_rate"] == schema_default("healing", "dpo_learning_rate")
        assert settings["healing"]["dpo_learning_rate"] != ORGANISM["healing"]["dpo_learning_rate"]
        assert settings["healing"]["lora_target_modules"] == schema_default("healing", "lora_target_modules")
        evaluation = settings["evaluation"]
        assert evaluation["refusal_detection_mode"] == schema_default("evaluation", "refusal_detection_mode")
        assert evaluation["refusal_detection_mode"] != ORGANISM["evaluation"]["refusal_detection_mode"]
        default_source = schema_default("evaluation", "mmlu", "source")
        assert {k: evaluation["mmlu"]["source"][k] for k in default_source} == default_source
        assert evaluation["hallucination"]["source"] != ORGANISM["evaluation"]["hallucination"]["source"]
        assert settings["search"]["n_trials"] == file["search"]["n_trials"]


def test_without_a_configfile_the_organism_default_runs_with_config_values_on_top():
    plain = workflow_variants()
    assert list(plain) == list(ORGANISM["variants"])
    assert plain["baseline"]["abliteration"]["norm_preservation"] == "none"
    assert plain["norm_row"]["healing"]["dpo_learning_rate"] == ORGANISM["healing"]["dpo_learning_rate"]
    seeded = workflow_variants(overrides={"seed": 7})
    assert list(seeded) == list(ORGANISM["variants"]) and seeded["norm_row"]["seed"] == 7


def test_a_user_config_keeps_only_its_own_variant(tmp_path: Path):
    """A one-variant config does not inherit the organism's four variants (a deep merge would have added them)."""
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump({"search": {"n_trials": 3}, "variants": {"mine": {}}}))
    resolved = workflow_variants(config)
    assert list(resolved) == ["mine"]
    assert resolved["mine"]["abliteration"]["norm_preservation"] == schema_default(
        "abliteration", "norm_preservation"
    )
    assert resolved["mine"]["search"]["n_trials"] == 3
    assert resolved["mine"]["search"]["n_startup_trials"] == schema_default("search", "n_startup_trials")
