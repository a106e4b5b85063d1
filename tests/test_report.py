"""The HTML comparison report: rendered from a small real results tree (tests/report_fixture.py), it has every section,
escapes model text, references nothing outside the file, embeds its images, and says what is disabled or missing."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest
import report_fixture

from bruno.jobs.report import run
from bruno.report import tables

ATTRIBUTE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


@pytest.fixture(scope="module")
def fixture_report(tmp_path_factory) -> tuple[str, dict]:
    kwargs = report_fixture.build(tmp_path_factory.mktemp("report"))
    return run(**kwargs), kwargs


@pytest.fixture(scope="module")
def html(fixture_report) -> str:
    return fixture_report[0]


def section(html: str, anchor: str) -> str:
    start = html.index(f'id="{anchor}"')
    end = html.find("<section", start)
    return html[start : end if end > 0 else len(html)]


def test_written_atomically_and_small(fixture_report):
    html, kwargs = fixture_report
    written = Path(kwargs["out_path"]).read_text(encoding="utf-8")
    assert written == html
    assert len(written.encode("utf-8")) < 3_000_000
    assert not list(Path(kwargs["out_path"]).parent.glob(".report.html.*"))


def test_every_section_present(html):
    for anchor in ("verdict", "verdict-table", "success", "success-table", "ab", "ab-search", "cones",
                   "variant-baseline", "variant-cones", "run"):  # fmt: skip
        assert f'id="{anchor}"' in html, anchor
    for text in (
        "config hash", "git commit", "Machine and versions", "Seeds", "organism seed", "Wall time per rule",
        'alt="Pareto front of baseline"', 'alt="Trial history of baseline"', 'alt="Layer weights of baseline"',
        'alt="Direction norms of baseline"', 'alt="DPO training curve of baseline"', "Parameter importances", "Selection rule:", "lowest KL among trials",
        "Chosen trial #", "Sample responses", "Healing (DPO)", "Prompt sets", "Full configuration",
    ):  # fmt: skip
        assert text in html, text
    for package in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "optuna",
        "snakemake",
        "sentence-transformers",
        "python",
    ):
        assert f"<td>{package}</td>" in html, package
    assert "optimize" in section(html, "top")  # per-rule wall time from benchmarks/


def test_model_text_is_escaped(html):
    assert "<script" not in html.lower()  # the page itself has no scripts; model text must not add one
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<i>fraud</i>" not in html  # metadata (cone categories) is escaped as well


def test_no_external_references(html):
    values = ATTRIBUTE.findall(html)
    assert values
    for value in values:
        assert value.startswith(("data:image/png;base64,", "#")) or (
            "://" not in value and not value.startswith("//") and not value.startswith(("javascript:", "/"))
        ), value
    lowered = html.lower()
    for needle in ("http://", "https://", "//cdn", "@import", "url(", "<link", "<iframe", "<object"):
        assert needle not in lowered, needle


def test_images_are_embedded_pngs(html):
    sources = re.findall(r'<img src="([^"]+)"', html)
    # verdict bars + per variant (pareto, history, kernel, separation) + the healing curve of `baseline`
    assert len(sources) == 1 + 2 * 4 + 1
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_disabled_and_missing_parts_say_so(html):
    cones = section(html, "variant-cones")
    assert "Healing disabled for this variant" in cones
    assert "healing disabled for this variant" in section(html, "verdict")
    assert "disabled (directions.use_concept_cones: false)" in html
    assert "hallucination evaluation off or not run" in section(html, "success")
    assert "Not tested: one replicate per variant" in section(html, "ab")
    assert "not applied (off)" in cones  # CAA


def test_healing_section_compares_ablated_and_healed_per_prompt(html):
    # Fixture: per-prompt KL 0.02, 0.03, 0.01, 0.5 (ablated) and 0.005, 0.01, 0.002, 0.52 (healed).
    text = re.sub(r"\s+", " ", section(html, "variant-baseline"))
    assert "ablated &rarr; healed: 0.14 &rarr; 0.134; change -0.00575" in text
    assert "closer to the base on 3 of 4 prompts" in text
    assert "median per prompt 0.025 &rarr; 0.0075" in text
    assert "kl-change" not in section(html, "variant-cones")  # healing off there


def test_healing_section_shows_the_checkpoint_guard(html):
    text = re.sub(r"\s+", " ", section(html, "variant-baseline"))
    assert "Checkpoint selection kept step 10 of 20." in text
    rows = re.findall(
        r"<tr( class=\"selected\")?><td class=\"num\">([^<]+)</td>.*?<td>(yes|no)</td></tr>", text
    )
    assert rows == [("", "0", "yes"), (' class="selected"', "10 (kept)", "yes"), ("", "20", "no")]


def test_healing_that_kept_step_0_says_why():
    from bruno.report.tables import healing_checkpoints

    record = {
        "settings": {"checkpoint_max_refusal_increase": 0.02},
        "training": {"selected_step": 0, "checkpoint_refusal_limit": 0.02, "checkpoints": [
            {"step": 0, "val_kl_divergence": 0.69, "val_refusal_rate": 0.0, "within_guard": True},
            {"step": 4, "val_kl_divergence": 0.466, "val_refusal_rate": 0.03125, "within_guard": False},
            {"step": 8, "val_kl_divergence": 0.413, "val_refusal_rate": 0.03125, "within_guard": False},
        ]},
    }  # fmt: skip
    summary = healing_checkpoints(record)
    assert summary["outcome"] == (
        "Healing left the ablated model unchanged: every later checkpoint raised the val refusal rate above the "
        "guard's 2.0 % (step 0's 0.0 % + healing.checkpoint_max_refusal_increase 0.02); their val KL reached 0.413, "
        "step 0's 0.69."
    )
    assert [r["allowed"] for r in summary["rows"]] == ["yes", "no", "no"]
    assert [r["selected"] for r in summary["rows"]] == [True, False, False]
    # a later step within the guard but with a higher KL: kept step 0 for the KL, not the guard
    record["training"]["checkpoints"][1].update(
        val_kl_divergence=0.9, val_refusal_rate=0.0, within_guard=True
    )
    assert healing_checkpoints(record)["outcome"] == (
        "Healing left the ablated model unchanged: no later checkpoint within the guard had a lower val KL (the "
        "ones beyond it reached 0.413)."
    )
    record["training"]["checkpoints"].pop()
    assert healing_checkpoints(record)["outcome"].endswith(
        "no later checkpoint within the guard had a lower val KL."
    )
    # a record written before the guard's verdict was stored: the rows, no verdict and no reason made up
    for c in record["training"]["checkpoints"]:
        del c["within_guard"]
    del record["training"]["checkpoint_refusal_limit"]
    old = healing_checkpoints(record)
    assert [r["allowed"] for r in old["rows"]] == ["not recorded", "not recorded"]
    assert old["outcome"] == "Checkpoint selection kept step 0 of 4."
    assert healing_checkpoints({"training": {"steps": 3}}) is None


def test_verdict_highlights_best_and_labels_organism(html):
    verdict = section(html, "verdict")
    assert "Organism numbers." in html
    assert "organism task set" in verdict and "MMLU" not in verdict
    best = re.findall(r'<td class="num best">([^<]+)<', verdict)
    # harmful refusal 0.0 % (cones), KL 0.05 (baseline healed), capability 60.0 % (baseline healed)
    assert "0.0 %" in best and "0.05" in best and "60.0 %" in best
    assert "95 % interval" in verdict and "n=100" in verdict


def test_success_criteria_are_honest(html):
    rows = re.findall(
        r"<tr><td>(\w+)</td><td>(\w+)</td>(.*?)</tr>", section(html, "success-table"), re.DOTALL
    )
    verdicts = {(v, s): re.findall(r'class="status [\w ]+">([\w ]+)<', cells) for v, s, cells in rows}
    assert verdicts[("baseline", "ablated")] == ["pass", "pass", "pass", "pass"]
    assert verdicts[("baseline", "healed")] == ["pass", "pass", "fail", "fail"]  # hallucination 12 %
    assert verdicts[("cones", "ablated")] == ["fail", "fail", "not measured", "fail"]
    assert "point estimate only" in section(html, "success-table")


def test_sparse_tree_renders_and_says_not_run(fixture_report, tmp_path):
    kwargs = fixture_report[1]
    sparse = tmp_path / "results"
    (sparse / "eval" / "base").mkdir(parents=True)
    shutil.copy(kwargs["results_dir"] / "eval" / "base" / "metrics.json", sparse / "eval" / "base")
    html = run(
        **{
            **kwargs,
            "results_dir": sparse,
            "benchmarks_dir": tmp_path / "none",
            "out_path": sparse / "r.html",
        }
    )
    assert "A/B summary not available" in html
    assert "not run: no metrics.json for this stage" in html
    assert "study.db not found" in html and "directions.pt not found" in html
    assert "no benchmarks found" in html
    assert "No edited model has been evaluated yet." in html


def test_replicates_and_variant_order(fixture_report, tmp_path):
    kwargs = fixture_report[1]
    results = tmp_path / "results"
    shutil.copytree(kwargs["results_dir"], results)
    report_fixture.write_ab(results, list(kwargs["variants"]), replicates=3)
    variants = dict(reversed(kwargs["variants"].items()))
    html = run(
        **{**kwargs, "results_dir": results, "variants": variants, "out_path": results / "report.html"}
    )
    ab = section(html, "ab")
    assert "Means over replicate seeds with 95 % t-intervals." in ab
    assert "1 of 1 comparisons differ at α = 0.05" in ab
    assert "[0.1, 0.3]" in ab  # the interval of best_kl_at_zero_refusals_val
    # variants appear in the configured order everywhere
    assert html.index('id="variant-cones"') < html.index('id="variant-baseline"')
    rows = re.findall(r"<tr class=\"[^\"]*\">\s*<td>(\w+)</td>", section(html, "verdict-table"))
    assert rows[:2] == ["base", "cones"]
    assert re.findall(r"<tr><td>(\w+)</td><td class=\"num\">", section(html, "ab-search"))[:2] == [
        "cones",
        "baseline",
    ]


@pytest.mark.parametrize(
    ("accuracy", "status"), [(0.58, "pass"), (0.579, "fail"), (0.65, "pass"), (None, "not measured")]
)
def test_capability_criterion(accuracy, status):
    base = {"mmlu_accuracy": {"value": 0.60, "n": 100, "ci95": [0.5, 0.7]}}
    stage = {} if accuracy is None else {"mmlu_accuracy": {"value": accuracy, "n": 100, "ci95": [0, 1]}}
    assert tables.capability_criterion(base, stage)["status"] == status


def test_kl_and_hallucination_criteria():
    assert tables.kl_at_zero_criterion(None, None, None)["status"] == "not measured"
    assert tables.kl_at_zero_criterion(None, "study (val)", 0)["status"] == "fail"
    assert tables.kl_at_zero_criterion(0.199, "study (val)", 3)["status"] == "pass"
    assert tables.kl_at_zero_criterion(0.20, "study (val)", 3)["status"] == "fail"
    assert tables.hallucination_criterion({"hallucination_rate": {"value": None}})["status"] == "not measured"
    assert (
        tables.hallucination_criterion({"hallucination_rate": {"value": 0.1, "ci95": [0, 1]}})["status"]
        == "fail"
    )
    assert tables.overall([{"status": "pass"}, {"status": "not measured"}]) == "incomplete"


def test_number_formatting():
    assert tables.fmt_number(float("nan")) == "—"
    assert tables.fmt_number(0.0031234) == "0.00312"
    assert tables.fmt_number(1234.5) == "1,234"  # round half to even
    assert tables.fmt_percent(0.125) == "12.5 %"
    assert tables.fmt_interval(0.1, 0.2, percent=True) == "[10.0, 20.0]"


def test_best_is_marked_only_where_edited_models_differ():
    def m(harmful: float, kl: float) -> dict:
        return {
            "refusal_rate_harmful": {"value": harmful, "n": 10, "ci95": [0, 1]},
            "kl_divergence": {"value": kl, "n": 10, "ci95": [0, 1]},
        }

    table = tables.verdict_table(
        m(1.0, 0.0), {"a": {"ablated": m(0.0, 0.2), "healed": m(0.0, 0.1)}}, {"a": ["ablated", "healed"]}
    )
    keys = [c.key for c in table["columns"]]
    harmful, kl = keys.index("refusal_rate_harmful"), keys.index("kl_divergence")
    assert [r["cells"][harmful]["best"] for r in table["rows"]] == [False, False, False]  # tie: no "best"
    assert [r["cells"][kl]["best"] for r in table["rows"]] == [False, False, True]
