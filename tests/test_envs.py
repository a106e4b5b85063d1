"""Conda envs, checked statically (no conda can run here): every rule has one, every pin is exact and equals pip's.

Snakemake checks none of this: a `conda:` file that is missing passes dry runs, real runs and `--lint` alike.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import procs
import pytest
import yaml
from workflow_rules import REPO, parse_rules

ENV_DIR = REPO / "envs"
EXAMPLE = REPO / "config" / "examples" / "qwen2.5-7b-instruct-24gb.yaml"
_PIP_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([0-9][0-9A-Za-z.+!-]*)$")
# conda match specs pinned to one version: `name=1.2.3` (conda's exact-version form) or `name==1.2.3`.
_CONDA_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==?([0-9]+(?:\.[0-9]+){2,}[0-9A-Za-z.+]*)$")


def canonical(name: str) -> str:
    """PyPI name normalisation: case-insensitive, runs of - _ . are equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _PIP_PIN.match(line)
        assert match, f"requirements.txt: '{line}' is not pinned exactly (name==version)"
        pins[canonical(match[1])] = match[3]
    return pins


def load_env(path: Path) -> dict:
    env = yaml.safe_load(path.read_text())
    assert isinstance(env, dict), f"{path.name}: not a YAML mapping"
    assert env.get("channels") and all(isinstance(c, str) for c in env["channels"]), (
        f"{path.name}: no channels"
    )
    assert isinstance(env.get("dependencies"), list) and env["dependencies"], f"{path.name}: no dependencies"
    return env


def env_pins(env: dict, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(conda pins, pip pins) of one env file, each {canonical name: version}; fails on anything not exact."""
    conda, pip = {}, {}
    for dependency in env["dependencies"]:
        if isinstance(dependency, dict):
            assert set(dependency) == {"pip"}, f"{name}: unexpected dependency block {sorted(dependency)}"
            for spec in dependency["pip"]:
                match = _PIP_PIN.match(str(spec).strip())
                assert match, f"{name}: pip dependency '{spec}' is not pinned exactly (name==version)"
                pip[canonical(match[1])] = match[3]
        else:
            spec = str(dependency).split("::")[-1].strip()
            match = _CONDA_PIN.match(spec)
            assert match, f"{name}: conda dependency '{dependency}' is not pinned to one version (name=x.y.z)"
            conda[canonical(match[1])] = match[2]
    return conda, pip


RULES = parse_rules()
ACTION_RULES = {name: rule for name, rule in RULES.items() if rule.has_action}


def test_rule_parser_sees_every_rule():
    """Cross-check the text parser with Snakemake's own list (a real model config: no local prompt files needed)."""
    result = procs.run(
        [sys.executable, "-m", "snakemake", "--list-rules", "--workflow-profile", "none"]
        + ["--snakefile", str(REPO / "Snakefile"), "--configfile", str(EXAMPLE)],
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert listed == set(RULES), f"parser: {sorted(RULES)}; snakemake: {sorted(listed)}"


@pytest.mark.parametrize("name", sorted(ACTION_RULES))
def test_every_rule_has_a_conda_env_that_exists_and_parses(name):
    rule = ACTION_RULES[name]
    assert rule.conda is not None, f"rule {name} ({rule.file.name}) has no conda: directive"
    assert rule.conda.is_file(), f"rule {name}: conda env {rule.conda} does not exist"
    assert rule.conda.parent == ENV_DIR, f"rule {name}: conda env {rule.conda} is not under envs/"
    load_env(rule.conda)


def test_no_unused_env_files():
    used = {rule.conda for rule in ACTION_RULES.values() if rule.conda}
    unused = sorted(p.name for p in ENV_DIR.glob("*.y*ml") if p.resolve() not in used)
    assert not unused, f"env files no rule uses: {unused}"


@pytest.mark.parametrize("path", sorted(ENV_DIR.glob("*.y*ml")), ids=lambda p: p.name)
def test_env_pins_are_exact_and_equal_requirements(path):
    requirements = requirement_pins()
    conda, pip = env_pins(load_env(path), path.name)
    for name, version in pip.items():
        assert name in requirements, f"{path.name}: pip package {name} is not in requirements.txt"
        assert version == requirements[name], (
            f"{path.name}: {name}=={version} but requirements.txt pins {requirements[name]}"
        )
    for name, version in conda.items():
        if name in requirements:
            assert version == requirements[name], (
                f"{path.name}: conda {name}={version} != pip {requirements[name]}"
            )
    assert "python" in conda, f"{path.name}: pin python itself (e.g. python=3.11.7)"
    assert not set(conda) & set(pip), f"{path.name}: {sorted(set(conda) & set(pip))} both from conda and pip"


def test_every_requirement_is_in_some_env():
    covered = set()
    for path in ENV_DIR.glob("*.y*ml"):
        conda, pip = env_pins(load_env(path), path.name)
        covered |= set(conda) | set(pip)
    missing = sorted(set(requirement_pins()) - covered)
    assert not missing, f"requirements.txt packages no env installs: {missing}"


def test_pin_checks_catch_loose_pins():
    with pytest.raises(AssertionError, match="not pinned exactly"):
        env_pins({"dependencies": ["python=3.11.7", {"pip": ["torch>=2"]}]}, "x.yaml")
    with pytest.raises(AssertionError, match="not pinned to one version"):
        env_pins({"dependencies": ["python=3.11"]}, "x.yaml")
    assert env_pins({"dependencies": ["conda-forge::python==3.11.7", {"pip": ["Jinja2==3.1.6"]}]}, "x") == (
        {"python": "3.11.7"},
        {"jinja2": "3.1.6"},
    )
    assert canonical("Scikit_Learn") == canonical("scikit-learn") == canonical("scikit.learn")
