"""Test helpers: the rules of the workflow read from the snakefmt-formatted rule files, a dry-run wrapper, and the
planned jobs with their input and params.

The parser serves tests of directives Snakemake itself does not check (a `conda:` file that exists, the profile's
resources of GPU rules); `snakemake --list-rules` is the cross-check that it missed nothing.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import procs

REPO = Path(__file__).resolve().parents[1]
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
ACTIONS = ("script", "shell", "run", "notebook", "wrapper", "cwl", "template_engine")

# `rule x:` and `use rule base as x with:` (x takes base's directives, the ones after `with:` replaced)
_RULE = re.compile(
    r"^(?:(?:rule|checkpoint)\s+(\w+)|use\s+rule\s+(\w+)\s+as\s+(\w+)\s+with)\s*:", re.MULTILINE
)
_DIRECTIVE = re.compile(r"^    (\w+):\s*(.*)$")
_RESOURCE = re.compile(r"^\s+(\w+)\s*=\s*([^,]+),?\s*$")


@dataclass
class Rule:
    name: str
    file: Path
    directives: dict[str, list[str]] = field(default_factory=dict)
    base: str | None = None  # the rule a `use rule ... with:` rule is made from
    own: set[str] = field(default_factory=set)  # directives written in this rule's own block

    @property
    def conda(self) -> Path | None:
        """The `conda:` file, resolved like Snakemake does: relative to the file that holds the rule."""
        values = self.directives.get("conda")
        if not values:
            return None
        return (self.file.parent / values[0].strip().strip(",").strip("\"'")).resolve()

    @property
    def resources(self) -> dict[str, str]:
        found = {}
        for line in self.directives.get("resources", []):
            match = _RESOURCE.match("    " + line)
            if match:
                found[match[1]] = match[2].strip()
        return found

    @property
    def has_action(self) -> bool:
        return any(action in self.directives for action in ACTIONS)


def parse_rules(files: list[Path] = RULE_FILES) -> dict[str, Rule]:
    """{rule name: Rule}; each directive maps to its value lines (inline value first, then the indented block)."""
    rules: dict[str, Rule] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        starts = [(m.start(), m[1] or m[3], m[2]) for m in _RULE.finditer(text)]
        for index, (start, name, base) in enumerate(starts):
            end = starts[index + 1][0] if index + 1 < len(starts) else len(text)
            own: dict[str, list[str]] = {}
            current: list[str] | None = None
            for line in text[start:end].splitlines()[1:]:
                if line and not line[0].isspace():
                    break  # back at top level: the rule ended
                directive = _DIRECTIVE.match(line)
                if directive:
                    current = own.setdefault(directive[1], [])
                    if directive[2]:
                        current.append(directive[2])
                elif current is not None and line.strip():
                    current.append(line.strip())
            inherited = dict(rules[base].directives) if base else {}
            rules[name] = Rule(name, path, {**inherited, **own}, base, set(own))
    return rules


@dataclass
class DryRun:
    output: str
    jobs: dict[str, int]  # the "Job stats" table: rule -> number of jobs
    blocks: dict[str, list[str]]  # rule -> the printed job blocks ("rule x:" and its indented lines)

    def resources(self, rule: str) -> list[dict[str, str]]:
        """The resolved resources of every job of `rule`, as printed by the dry run."""
        found = []
        for block in self.blocks.get(rule, []):
            line = next((x for x in block.splitlines() if x.strip().startswith("resources:")), "")
            items = line.split("resources:", 1)[-1].split(", ") if line else []
            found.append(dict(item.strip().split("=", 1) for item in items if "=" in item))
        return found


def dry_run(workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 180) -> DryRun:
    """`snakemake -n --forceall` of the repository's Snakefile in `workdir` (no workflow profile unless given)."""
    command = [sys.executable, "-m", "snakemake", "-n", "--forceall", "--snakefile", str(REPO / "Snakefile")]
    if "--workflow-profile" not in args:
        command += ["--workflow-profile", "none"]
    result = procs.run(
        command + list(args),
        cwd=workdir,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"dry run failed (rc={result.returncode}):\n{output[-4000:]}"
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    jobs = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE)}
    blocks: dict[str, list[str]] = {}
    for match in re.finditer(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", output, flags=re.MULTILINE):
        blocks.setdefault(match[1], []).append(match[2])
    return DryRun(output, jobs, blocks)


# Runs `snakemake --dag` with the DAG printer wrapped: after Snakemake builds the DAG of every job, it prints each job's
# input files and its params as Snakemake records them for its `params` rerun trigger (the repr of each value).
_PRINT_JOBS = """
import json, sys
from snakemake.cli import main
from snakemake.workflow import Workflow

print_dag = Workflow.printdag


def print_jobs(workflow):
    print_dag(workflow)
    jobs = {
        job.rule.name + "[" + ",".join(f"{k}={v}" for k, v in job.wildcards_dict.items()) + "]": {
            "input": list(job.input),
            "params": {name: repr(value) for name, value in job.params.items()},
            "priority": job.rule.priority,
        }
        for job in workflow.dag.jobs
    }
    print("JOBS " + json.dumps(jobs))


Workflow.printdag = print_jobs
main(sys.argv[1:])
"""


def planned_jobs(workdir: Path, *args: str, timeout: int = 180) -> dict[str, dict]:
    """{"rule[wildcards]": {"input": [path, ...], "params": {name: repr(value)}, "priority": n}} of every job of the complete plan
    (`--forceall`) of the repository's Snakefile in `workdir`; the params as Snakemake compares them to decide that a
    job's params changed."""
    command = [sys.executable, "-c", _PRINT_JOBS, "--dag", "--forceall", "--workflow-profile", "none"]
    command += ["--snakefile", str(REPO / "Snakefile"), *args]
    result = procs.run(command, cwd=workdir, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"planning failed (rc={result.returncode}):\n{output[-4000:]}"
    line = next((x for x in result.stdout.splitlines() if x.startswith("JOBS ")), None)
    assert line, f"no jobs printed:\n{output[-4000:]}"
    return json.loads(line.removeprefix("JOBS "))
