"""The decoding-step profile (`bruno_tools.step_profile`) on a tiny model: correctness only, no timing is checked."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO
from transformers import AutoModelForCausalLM

from bruno_tools import step_profile

pytestmark = pytest.mark.usefixtures("one_thread")


def test_operators_are_bucketed_by_name_and_shape():
    vocab = 500
    assert step_profile.bucket("aten::mm", [[4, 16], [16, 500]], vocab) == "vocabulary projection"
    assert step_profile.bucket("aten::addmm", [[64], [4, 16], [16, 64]], vocab) == "linear layers"
    assert step_profile.bucket("aten::_scaled_dot_product_flash_attention_for_cpu", [], vocab) == "attention"
    assert step_profile.bucket("aten::cat", [[4, 2, 5, 8]], vocab) == "concatenation (KV cache, masks)"
    assert step_profile.bucket("aten::add", [[4, 16], [4, 16]], vocab) == "other operators"
    assert (
        step_profile.bucket("aten::linear", [[4, 16], [500, 16]], vocab) == "other operators"
    )  # dispatch only


def test_a_profile_of_the_pipelines_decoding_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "profile.json"
    report = step_profile.main(
        ["--model", str(tiny_model_dir), "--workdir", str(tmp_path / "work"), "--prompts", "3", "--tokens", "3",
         "--rounds", "1", "--threads", "1", "--peak-repeats", "1", "--harmful", str(REPO / "data" / "prompts" / "harmful.jsonl"),
         "--out", str(out)]
    )  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert report["prompts"] == 3 and report["tokens"] == 3
    assert 0 < report["prompt_tokens"] <= report["padded_positions"]
    assert report["bound_prefill"] > 0 and report["bound_step"] > 0
    # each decoding step runs every linear layer once and the vocabulary projection once (counts, not times)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert report["profiled_step_calls"]["vocabulary projection"] == 1
    assert report["profiled_step_calls"]["linear layers"] == len(linear) - 1
    assert set(report["profiled_step_seconds"]) == set(report["profiled_step_calls"])
    assert {(q["in"], q["out"]) for q in report["linear_rates"]} == {
        (m.in_features, m.out_features) for m in linear
    }
    printed = capsys.readouterr().out
    assert "decoding step:" in printed and "vocabulary projection" in printed


def test_fewer_than_two_tokens_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        step_profile.main(["--tokens", "1", "--out", str(tmp_path / "p.json")])
