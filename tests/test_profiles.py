"""The workstation and SLURM profiles: every entry commented, the settings the issue and the measured facts demand,
GPU rules covered, and dry runs that resolve the GPU rules' resources.

The SLURM profile dry-runs here without SLURM. The workstation profile sets `software-deployment-method: conda`,
and no conda can run here (Snakemake fails even a dry run without it), so it is checked statically plus a dry run of
the same profile without that one key.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from workflow_rules import REPO, dry_run, parse_rules

PROFILES = REPO / "profiles"
WORKSTATION = PROFILES / "workstation" / "config.v8+.yaml"
SLURM = PROFILES / "slurm" / "config.v8+.yaml"
CPU = PROFILES / "cpu" / "config.v8+.yaml"
REAL = REPO / "config" / "real.yaml"
EXAMPLE = REPO / "config" / "examples" / "qwen2.5-7b-instruct-24gb.yaml"
RULES = parse_rules()
GPU_RULES = sorted(name for name, rule in RULES.items() if rule.resources.get("gpu", "0") != "0")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_profiles_are_named_for_snakemake_8_and_9_and_none_is_auto_applied():
    assert WORKSTATION.is_file() and SLURM.is_file() and CPU.is_file()
    assert not (PROFILES / "default").exists(), (
        "profiles/default/ would be applied to every run automatically"
    )
    for folder in (WORKSTATION.parent, SLURM.parent, CPU.parent):
        assert [p.name for p in folder.iterdir()] == ["config.v8+.yaml"], "one profile file per folder"


@pytest.mark.parametrize("path", [WORKSTATION, SLURM, CPU], ids=["workstation", "slurm", "cpu"])
def test_every_entry_is_commented(path: Path):
    previous = ""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if re.match(r"^\s*[\w-]+:", line):
            assert previous.lstrip().startswith("#") or " # " in line, (
                f"{path.relative_to(REPO)}:{number}: '{line.strip()}' has no comment"
            )
        if line.strip():
            previous = line


def test_gpu_rules_declare_portable_resources():
    assert GPU_RULES, "no rule declares gpu=1"
    for name in GPU_RULES:
        resources = RULES[name].resources
        # optimize_gpus: 1 when the optimize job runs the search itself, 0 when parallel workers did (it only copies).
        assert resources["gpu"] in ("1", "optimize_gpus"), name
        assert "mem_mb" in resources and "runtime" in resources, f"rule {name}: declare mem_mb and runtime"
    for name, rule in RULES.items():
        site_keys = {
            "slurm_partition",
            "slurm_account",
            "cpus_per_gpu",
            "cpus_per_task",
            "gpu_model",
            "constraint",
        }
        assert not site_keys & set(rule.resources), f"rule {name}: cluster settings belong in profiles/slurm"


def test_workstation_profile():
    profile = load(WORKSTATION)
    assert profile["cores"] == "all"
    assert profile["software-deployment-method"] == "conda"
    # Without a cap, two gpu=1 jobs run at once on one card (measured).
    assert isinstance(profile["resources"]["gpu"], int) and profile["resources"]["gpu"] >= 1
    assert "executor" not in profile


def test_workstation_profile_dry_run_without_conda(tmp_path: Path):
    """Every other key is a valid Snakemake flag: dry-run the profile minus the conda key (no conda here)."""
    profile = load(WORKSTATION)
    del profile["software-deployment-method"]
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.v8+.yaml").write_text(yaml.safe_dump(profile))
    run = dry_run(tmp_path, "--profile", str(tmp_path / "profile"), "--configfile", str(EXAMPLE))
    assert run.jobs["total"] > 1
    directions = run.resources("directions")[0]
    assert directions["gpu"] == "1"


def _job_threads(run, rule: str) -> list[int]:
    """Threads of every planned job of `rule` (a dry run prints `threads:` only when it is above 1)."""
    found = []
    for block in run.blocks.get(rule, []):
        match = re.search(r"^\s*threads: (\d+)$", block, flags=re.MULTILINE)
        found.append(int(match[1]) if match else 1)
    return found


def test_cpu_profile_runs_model_jobs_one_thread_each_but_the_search(tmp_path: Path):
    """The real-model config under the CPU profile on 2 cores: directions, searches, evaluations and healing take one
    thread each (two run at once); safety tuning, alone in the DAG at its time, keeps both cores."""
    profile = load(CPU)
    assert profile["cores"] == "all" and "software-deployment-method" not in profile
    unknown = sorted(set(profile["set-threads"]) - set(RULES))
    assert not unknown, f"set-threads names rules that do not exist: {unknown}"
    (tmp_path / "data").symlink_to(REPO / "data")
    run = dry_run(tmp_path, "--profile", str(CPU), "--cores", "2", "--configfile", str(REAL))
    for rule in ("directions", "optimize", "abliterate", "evaluate_base", "evaluate_stage", "heal"):
        assert run.jobs.get(rule), f"{rule} is not planned"
        assert _job_threads(run, rule) == [1] * run.jobs[rule], rule
    assert _job_threads(run, "safety_tune") == [2]


def test_slurm_profile_settings():
    profile = load(SLURM)
    assert profile["executor"] == "slurm"
    assert isinstance(profile["jobs"], int) and profile["jobs"] >= 1
    assert profile["latency-wait"] >= 30 and profile["retries"] >= 1
    # Without accounting the plugin's default (sacct) hangs forever; squeue needs MinJobAge (default 300 s) >= 3 x
    # the first status-check delay, or the plugin silently falls back to sacct.
    assert profile["slurm-status-command"] == "squeue"
    assert 1 <= profile["slurm-init-seconds-before-status-checks"] <= 300 // 3
    # Conda stays a command-line choice: a profile with it cannot even dry-run where conda is missing.
    assert "software-deployment-method" not in profile and "use-conda" not in profile
    defaults = profile["default-resources"]
    assert "cpus_per_task" not in defaults, (
        "cpus_per_task in default-resources overrides cpus_per_gpu of GPU rules"
    )
    assert defaults["slurm_partition"].startswith("FILL-IN") and defaults["slurm_account"].startswith(
        "FILL-IN"
    )
    assert isinstance(profile["cores"], int), (
        "rules use `threads: workflow.cores`, which needs `cores` under SLURM"
    )


def test_slurm_profile_covers_every_gpu_rule():
    profile = load(SLURM)
    per_rule = profile["set-resources"]
    unknown = sorted(set(per_rule) - set(RULES))
    assert not unknown, f"set-resources names rules that do not exist: {unknown}"
    for name in GPU_RULES:
        assert name in per_rule, f"GPU rule {name} has no set-resources entry in {SLURM.relative_to(REPO)}"
        resources = per_rule[name]
        assert resources["gpu"] >= 1 and resources["cpus_per_gpu"] >= 1, name
        assert "cpus_per_task" not in resources, f"{name}: cpus_per_task would override cpus_per_gpu"
        assert resources["slurm_partition"].startswith("FILL-IN"), name
        assert resources["cpus_per_gpu"] == profile["cores"], f"{name}: threads (cores) != cpus_per_gpu"


def test_slurm_profile_dry_run_shows_resolved_gpu_resources(tmp_path: Path):
    """Works without SLURM: the printout holds each job's resolved resources (what sbatch would be given)."""
    run = dry_run(tmp_path, "--profile", str(SLURM), "--configfile", str(EXAMPLE))
    profile = load(SLURM)
    planned_gpu_rules = [rule for rule in GPU_RULES if rule in run.jobs]
    assert {"directions", "optimize", "abliterate", "evaluate_base"} <= set(planned_gpu_rules)
    print("\nresolved resources of the GPU rules (dry run, profiles/slurm):")
    for rule in planned_gpu_rules:
        for resources in run.resources(rule):
            print(f"  {rule}: {resources}")
            assert resources["gpu"] == str(profile["set-resources"][rule]["gpu"])
            assert resources["cpus_per_gpu"] == str(profile["set-resources"][rule]["cpus_per_gpu"])
            assert resources["slurm_partition"] == profile["set-resources"][rule]["slurm_partition"]
            assert resources["slurm_account"] == profile["default-resources"]["slurm_account"]
            assert int(resources["runtime"]) > 0 and int(resources["mem_mb"]) > 0
        assert all(f"threads: {profile['cores']}" in block for block in run.blocks[rule]), rule
    for resources in run.resources("select"):
        assert "gpu" not in resources and "cpus_per_gpu" not in resources
        assert resources["slurm_partition"] == profile["default-resources"]["slurm_partition"]
