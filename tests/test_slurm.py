"""The default pipeline, reduced, through a real single-node SLURM cluster with the shipped SLURM profile.

Run by `make test-slurm`, which starts the cluster (tools/slurm/start.sh), runs this under a hard timeout and stops
the daemons afterwards. Skipped unless a SLURM node is idle here or BRUNO_SLURM_TEST=1 (then a missing cluster fails).

The run uses a temporary profile derived from profiles/slurm/config.v8+.yaml: only the site placeholders and sizes
change (partition `debug`, account `ci`, one CPU per GPU, small memory, cores 1, no retries, a short first status
check, and successful jobs' SLURM logs kept for the assertions). GPU rules keep `gpu: 1`: the test cluster has fake
GRES GPUs, so they really go through `sbatch --gpus=1` (and then run on the CPU).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest
import yaml
from conftest import REPO, build_tiny_model
from workflow_rules import parse_rules

pytestmark = pytest.mark.slurm

PROFILE = REPO / "profiles" / "slurm" / "config.v8+.yaml"
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
# The plugin waits forever if a status command never sees jobs finish: fail loudly instead.
RUN_TIMEOUT_S = int(os.environ.get("BRUNO_SLURM_RUN_TIMEOUT", "420"))


def _node_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(state in ("idle", "mix") for state in out.stdout.split())


@pytest.fixture
def cluster() -> None:
    if _node_idle():
        return
    if os.environ.get("BRUNO_SLURM_TEST") == "1":
        pytest.fail("BRUNO_SLURM_TEST=1 but no idle SLURM node here (start one with tools/slurm/start.sh)")
    pytest.skip("no SLURM cluster here (make test-slurm starts one)")


def derive_profile(folder: Path) -> dict:
    """The shipped SLURM profile with the placeholders and sizes of this one-node, 2-CPU test cluster."""
    profile = copy.deepcopy(yaml.safe_load(PROFILE.read_text()))
    profile.update(
        {
            "cores": 1,
            "jobs": 2,
            "retries": 0,
            "latency-wait": 5,
            "slurm-init-seconds-before-status-checks": 8,
            "slurm-keep-successful-logs": True,
        }
    )
    profile["default-resources"].update(slurm_partition="debug", slurm_account="ci", mem_mb=1000, runtime=10)
    for resources in profile["set-resources"].values():
        resources.update(slurm_partition="debug", mem_mb=1500)
        if "cpus_per_gpu" in resources:
            resources["cpus_per_gpu"] = 1
    folder.mkdir()
    (folder / "config.v8+.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return profile


def write_workdir(workdir: Path) -> None:
    """A tiny random chat model, 24 prompts per set and a config small enough for a few seconds per job."""
    build_tiny_model(workdir / "tinymodel")
    (workdir / "data").mkdir()
    for set_name in ("harmful", "harmless"):
        with open(workdir / "data" / f"{set_name}.jsonl", "w", encoding="utf-8") as f:
            for i in range(24):
                split = ("train", "train", "val", "test")[i % 4]
                f.write(
                    json.dumps({"id": f"{set_name}{i}", "text": f"{set_name} request {i}", "split": split})
                    + "\n"
                )
    config = {
        "model": {"name": "tinymodel", "batch_size": 8},
        "data": {
            set_name: {
                split: {"path": f"data/{set_name}.jsonl", "record_split": split}
                for split in ("train", "val", "test")
            }
            for set_name in ("harmful", "harmless")
        },
        "search": {
            "n_trials": 2,
            "n_startup_trials": 1,
            "max_new_tokens": 4,
            "n_refusal_prompts": 6,
            "n_kl_prompts": 6,
        },
        "healing": {"enable_post_abliteration_finetuning": False},
        # No hub here: the real-model defaults (cais/mmlu, truthful_qa) are switched off; markers need no embedder.
        "evaluation": {
            "max_new_tokens": 4,
            "refusal_detection_mode": "markers",
            "mmlu": {"enabled": False},
            "hallucination": {"enabled": False},
        },
        "variants": {"baseline": {}},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def jobs_in(workdir: Path) -> list[tuple[str, str, str]]:
    """(job id, comment, state) of every job SLURM still lists (MinJobAge) that ran in `workdir`."""
    out = subprocess.run(
        ["squeue", "--states=all", "-h", "-o", "%i|%k|%T|%Z"], capture_output=True, text=True, timeout=30
    )
    jobs = []
    for line in out.stdout.splitlines():
        job_id, comment, state, cwd = line.split("|", 3)
        if Path(cwd) == workdir:
            jobs.append((job_id, comment, state))
    return jobs


def rule_of(comment: str) -> str:
    """The plugin's job comment is `rule_<name>` or `rule_<name>_wildcards_<values>`."""
    return comment.removeprefix("rule_").split("_wildcards_", 1)[0]


def job_info(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    return dict(item.split("=", 1) for item in out.stdout.split() if "=" in item)


def failed_job_logs(workdir: Path) -> str:
    """The end of every rule log that holds a traceback, for the failure message."""
    parts = []
    for path in sorted((workdir / "logs").rglob("*.log")):
        text = path.read_text(errors="replace")
        if "Traceback" in text or "Error" in text:
            parts.append(f"\n--- {path.relative_to(workdir)} ---\n{text[-3000:]}")
    return "".join(parts)


def planned_rules(log: str) -> set[str]:
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    return {m[1] for m in re.finditer(r"^(\w+)\s+\d+$", table, flags=re.MULTILINE)} - {"all", "total"}


def test_pipeline_through_slurm(cluster, tmp_path: Path) -> None:
    workdir = (tmp_path / "run").resolve()
    workdir.mkdir()
    write_workdir(workdir)
    profile = derive_profile(tmp_path / "profile")
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    command += ["--configfile", str(workdir / "config.yaml"), "--workflow-profile", "none"]
    command += ["--profile", str(tmp_path / "profile")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # Jobs run `<this venv's python> -m snakemake` with the submitting environment (--export=ALL), as from an
    # activated venv.
    env["PATH"] = f"{SNAKEMAKE.parent}{os.pathsep}{env.get('PATH', '')}"
    start = time.monotonic()
    try:
        run = procs.run(command, cwd=workdir, env=env, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        stuck = [job for job, _, state in jobs_in(workdir) if state in ("PENDING", "CONFIGURING", "RUNNING")]
        if stuck:
            subprocess.run(["scancel", *stuck], check=False, timeout=30)
        output = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(
            f"snakemake --profile slurm did not finish in {RUN_TIMEOUT_S} s; last output:\n{output[-4000:]}"
        )
    log = run.stdout + run.stderr
    assert run.returncode == 0, (
        f"snakemake failed (rc={run.returncode}):\n{log[-6000:]}{failed_job_logs(workdir)}"
    )
    print(f"\nreduced pipeline through SLURM: {time.monotonic() - start:.1f} s")

    for output in (
        "results/report.html",
        "results/baseline/best_trial.json",
        "results/baseline/ablated/config.json",
        "results/eval/base/metrics.json",
        "results/eval/baseline/ablated/metrics.json",
    ):
        assert (workdir / output).is_file(), f"missing output {output}"

    # Every job except the declared local rules (seconds of bookkeeping on the head node) went through sbatch: the
    # plugin writes one log per SLURM job id, per rule, under .snakemake/.
    planned = planned_rules(log)
    local = {rule.name for rule in parse_rules().values() if "localrule" in rule.directives}
    assert {"prompts", "select", "ab_summary"} <= local, local
    expected = planned - local
    assert {"directions", "optimize", "abliterate", "evaluate_base", "report"} <= expected, expected
    slurm_logs = workdir / ".snakemake" / "slurm_logs"
    job_logs = list(slurm_logs.rglob("*.log"))
    assert all(p.stem.isdigit() for p in job_logs), "SLURM job logs are named after job ids"
    with_logs = {p.relative_to(slurm_logs).parts[0].removeprefix("rule_") for p in job_logs}
    assert expected <= with_logs, f"rules without a SLURM job log: {sorted(expected - with_logs)}"
    assert not (with_logs & local), f"local rules submitted to SLURM: {sorted(with_logs & local)}"

    # SLURM itself lists them (finished jobs stay for MinJobAge): COMPLETED, in partition `debug` under account `ci`;
    # the GPU rules with one GPU and one CPU per GPU, from the profile's `gpu` and `cpus_per_gpu`.
    jobs = {rule_of(comment): job_id for job_id, comment, _ in jobs_in(workdir)}
    assert expected <= set(jobs), f"rules SLURM does not list: {sorted(expected - set(jobs))}"
    for rule in expected:
        info = job_info(jobs[rule])
        assert info["JobState"] == "COMPLETED", (rule, info["JobState"])
        assert (info["Partition"], info["Account"]) == ("debug", "ci"), rule
        gpu_rule = "gpu" in profile["set-resources"].get(rule, {})
        assert ("gpu:1" in info.get("TresPerJob", "")) == gpu_rule, (rule, info.get("TresPerJob"))
        if gpu_rule:
            assert info["CpusPerTres"] == "gres:gpu:1", (rule, info["CpusPerTres"])
