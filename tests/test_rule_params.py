"""Each rule's params hold the settings its job reads and no others, so a config edit re-runs exactly the jobs it
affects (Snakemake re-runs a job whose params changed). Checked on the params Snakemake itself computes for every job
of a complete plan, before and after one edit of the config."""

from __future__ import annotations

import ast

import pytest
import yaml
from workflow_rules import REPO, parse_rules, planned_jobs

from bruno.config import deep_merge

SEARCH_RULES = {"init_study", "optimize_worker", "optimize"}
EVALUATION_RULES = {"evaluate_base", "evaluate_stage"}
# Three variants: a search with an extra objective over two workers (init_study, optimize_worker x2, optimize), a
# plain one-worker search, and one whose directions job reads the refusal markers (CAA). The evaluation scores neither
# hallucination nor capability, so their settings are the search's alone.
CONFIG = {
    "evaluation": {"hallucination": {"enabled": False}, "mmlu": {"enabled": False}},
    "variants": {
        "objective": {"search": {"optimize_workers": 2, "use_hallucination_detection": True}},
        "plain": {},
        "caa": {"directions": {"use_caa": True}},
    },
}


def rule_of(job: str) -> str:
    return job.split("[", 1)[0]


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    """plan(edit): the jobs of the complete plan of the embedded default with CONFIG and `edit` on top."""
    workdir = tmp_path_factory.mktemp("params")
    (workdir / "data").symlink_to(REPO / "data")
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    default["variants"] = {}

    def jobs(edit: dict | None = None) -> dict[str, dict]:
        config = deep_merge(deep_merge(default, CONFIG), edit or {})
        (workdir / "run.yaml").write_text(yaml.safe_dump(config))
        return planned_jobs(workdir, "--cores", "1", "--configfile", "run.yaml", timeout=600)

    return jobs


@pytest.fixture(scope="module")
def before(plan):
    return plan()


def changed_jobs(before: dict, after: dict) -> set[str]:
    assert set(after) == set(before), "the edit changed which jobs are planned"
    return {job for job in before if after[job]["params"] != before[job]["params"]}


def test_an_evaluation_only_edit_leaves_every_search_alone(plan, before):
    after = plan({"evaluation": {"max_new_tokens": 7, "hallucination": {"hallucination_n_samples": 9}}})
    assert changed_jobs(before, after) == {
        job for job in before if rule_of(job) in EVALUATION_RULES | {"report"}
    }


def test_an_evaluation_key_the_search_reads_reruns_only_the_searches_that_read_it(plan, before):
    # the hallucination objective's sampling temperature, read by the search of `objective` only (the evaluation of
    # hallucination is off); the capability evaluation's few-shot count is read by neither
    after = plan({"evaluation": {"hallucination": {"temperature": 0.7}, "mmlu": {"mmlu_few_shot": 2}}})
    changed = changed_jobs(before, after)
    assert changed - {"report[]"} == {
        "init_study[variant=objective]",
        "optimize_worker[variant=objective,worker=0]",
        "optimize_worker[variant=objective,worker=1]",
        "optimize[variant=objective]",
    }
    # the evaluation keys the objective reads, in the shape of the evaluation section
    evaluation = ast.literal_eval(after["optimize[variant=objective]"]["params"]["evaluation"])
    assert list(evaluation) == ["hallucination"]
    assert set(evaluation["hallucination"]) == {"source", "embedding_model", "temperature", "max_new_tokens"}
    assert evaluation["hallucination"]["temperature"] == 0.7
    assert after["optimize[variant=plain]"]["params"]["evaluation"] == "{}"


def test_refusal_markers_rerun_the_jobs_that_judge_replies(plan, before):
    after = plan({"evaluation": {"refusal_markers": ["sorry"]}})
    # the jobs that judge replies with them (the report shows the whole config)
    expected = {job for job in before if rule_of(job) in SEARCH_RULES | EVALUATION_RULES | {"heal", "report"}}
    # CAA finds the train prompts the model refuses; the other variants' directions read no markers
    expected.add("directions[variant=caa]")
    assert changed_jobs(before, after) == expected


def test_the_search_params_block_is_written_once(before):
    rules = parse_rules()
    assert rules["optimize"].base is None and "params" in rules["optimize"].own
    for name in SEARCH_RULES - {"optimize"}:
        assert rules[name].base == "optimize", f"rule {name} is not `use rule optimize as {name}`"
        assert "params" not in rules[name].own, f"rule {name} writes its own params"
    assert (REPO / "rules" / "optimize.smk").read_text().count("params:") == 2  # optimize and select
    # the planned jobs of one variant's search receive the same settings
    jobs = [job for job in before if rule_of(job) in SEARCH_RULES and "variant=objective" in job]
    assert len(jobs) == 4 and all(before[job]["params"] == before[jobs[0]]["params"] for job in jobs)


def test_the_selection_threshold_reruns_only_selection_and_confirmation_reruns_the_search(plan, before):
    after = plan({"selection": {"max_refusal_rate": 0.1}})
    assert changed_jobs(before, after) == {job for job in before if rule_of(job) in {"select", "report"}}
    # confirmation is scored by the search job (bruno.search.confirm): with several workers the job that writes the
    # snapshot confirms, so it reads the search inputs too
    after = plan({"variants": {"objective": {"selection": {"confirm_prompts": 16}}}})
    assert changed_jobs(before, after) == {
        job for job in before
        if "variant=objective" in job and rule_of(job) in SEARCH_RULES | {"select"} or rule_of(job) == "report"
    }  # fmt: skip
    confirmation = ast.literal_eval(after["optimize[variant=objective]"]["params"]["confirmation"])
    assert confirmation == {"confirm_prompts": 16, "confirm_candidates": 4, "confirm_max_new_tokens": None}
    assert "results/objective/directions.pt" in after["optimize[variant=objective]"]["input"]
    assert "results/objective/directions.pt" not in before["optimize[variant=objective]"]["input"]


def test_a_search_reads_the_question_file_of_its_extra_objective(before):
    for job in ("init_study[variant=objective]", "optimize_worker[variant=objective,worker=1]"):
        assert "data/eval/factual_qa.jsonl" in before[job]["input"], job
    assert not any("data/eval" in path for path in before["optimize[variant=plain]"]["input"])


def test_ab_summary_receives_the_edit_settings_its_table_shows(before):
    shown = ast.literal_eval(before["ab_summary[]"]["params"]["settings"])
    assert shown == {v: {"norm_preservation": "row", "biprojected": False} for v in CONFIG["variants"]}


def test_a_healed_models_evaluation_waits_for_the_ablated_one_it_may_reuse(before):
    # The healed evaluation reads the ablated model and its evaluation: when the healing kept step 0 (the same
    # model, byte for byte) it copies those figures instead of measuring the same model twice.
    evaluations = {job: spec for job, spec in before.items() if rule_of(job) == "evaluate_stage"}
    healed = {job for job in evaluations if "stage=healed" in job}
    assert healed and healed != set(evaluations)
    for job, spec in evaluations.items():
        variant = job.split("variant=", 1)[1].split(",", 1)[0].rstrip("]")
        inputs = set(spec["input"])
        if job in healed:
            assert {f"results/{variant}/ablated", f"results/eval/{variant}/ablated/metrics.json"} <= inputs, (
                job
            )
        else:
            assert not any(path.startswith(f"results/eval/{variant}/") for path in inputs), job


def test_variants_with_the_same_directions_settings_compute_them_once(plan, before):
    # `objective` and `plain` differ only in their search: the first in config order computes the directions, the
    # other copies them; `caa` reads the refusal markers and computes its own.
    assert {job for job in before if "directions" in rule_of(job)} == {
        "directions[variant=objective]",
        "share_directions[variant=plain]",
        "directions[variant=caa]",
    }
    assert before["share_directions[variant=plain]"]["input"] == ["results/objective/directions.pt"]
    # another seed for the directions of `plain` (the search seed seeds its directions job): computed again
    after = plan({"variants": {"plain": {"search": {"seed": 5}}}})
    assert {"directions[variant=plain]", "directions[variant=objective]"} <= set(after)
    assert not any(rule_of(job) == "share_directions" for job in after)


def test_jobs_that_gate_others_run_first(before):
    # When several jobs are ready, the base evaluation (every other evaluation reads its reference) goes first, then
    # the search chain, then healing; the stage evaluations, which only the report waits for, fill in.
    priority: dict[str, set[int]] = {}
    for job, spec in before.items():
        priority.setdefault(rule_of(job), set()).add(spec["priority"])
    levels = [
        {"evaluate_base"},
        {
            "directions",
            "share_directions",
            "optimize",
            "init_study",
            "optimize_worker",
            "select",
            "abliterate",
        },
        {"heal"},
        {"evaluate_stage"},
    ]
    for higher, lower in zip(levels, levels[1:], strict=False):
        for a in higher & set(priority):
            for b in lower & set(priority):
                assert min(priority[a]) > max(priority[b]), (a, priority[a], b, priority[b])
