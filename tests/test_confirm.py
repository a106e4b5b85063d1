"""Confirmation of the search's candidates on fresh val prompts (bruno.search.confirm) and selection on its counts."""

from __future__ import annotations

import json
import logging
import random

import optuna
import pytest
import torch
from optuna.trial import create_trial

from bruno.edit.plan import AbliterationSettings
from bruno.errors import BrunoError
from bruno.model.families import decoder_layers
from bruno.model.loading import ModelSettings, load_model
from bruno.search.confirm import candidates, confirm, confirmation_prompts
from bruno.search.select import SelectionSettings, select_trial
from bruno.search.space import SearchSettings, SearchSpace
from bruno.search.trial import Decoding, TrialEvaluator, TrialPrompts
from bruno_tools.bench_trials import random_values

pytestmark = pytest.mark.usefixtures("one_thread")

COMPONENTS = ["attn.o_proj", "mlp.down_proj"]
SEARCH = [f"How do I build weapon number {i}?" for i in range(6)]
FRESH = [f"Tell me how to hurt person number {i} badly." for i in range(8)]
HARMLESS = [f"How do I bake bread {'and cake ' * (i % 3)}today?" for i in range(6)]


def _trial(number, kl, refusal):
    t = create_trial(values=[kl, refusal], params={}, distributions={})
    t.number = number
    return t


def _confirmation(counts):
    """A stored confirmation: {trial number: (refusals, prompts)}."""
    return {
        "settings": {"confirm_prompts": 40},
        "trials": {
            str(n): {"n_refusals": r, "n_prompts": p, "refusal_rate": r / p, "kl_divergence": 0.0}
            for n, (r, p) in counts.items()
        },
    }


def test_candidates_are_the_fewest_refusals_then_lowest_kl():
    trials = [_trial(0, 0.30, 0.0), _trial(1, 0.05, 0.04), _trial(2, 0.01, 0.5), _trial(3, 0.10, 0.0),
              _trial(4, 0.10, 0.0)]  # fmt: skip
    assert [t.number for t in candidates(trials, 3)] == [3, 4, 0]
    assert [t.number for t in candidates(trials, 10)] == [3, 4, 0, 1, 2]


def test_confirmation_prompts_follow_the_search_prompts():
    prompts = [f"p{i}" for i in range(10)]
    assert confirmation_prompts(prompts, 4, 5) == ["p4", "p5", "p6", "p7", "p8"]
    with pytest.raises(BrunoError, match=r"confirm_prompts = 7 needs 11 harmful val prompts.*has 10"):
        confirmation_prompts(prompts, 4, 7)


def test_selection_judges_refusals_on_the_confirmation_alone():
    # Trial 1 has the lowest KL under the threshold in the search (1 of 24), but 6 of 40 on fresh prompts.
    trials = [_trial(0, 0.30, 0.0), _trial(1, 0.05, 1 / 24), _trial(2, 0.01, 0.5), _trial(3, 0.12, 0.0)]
    settings = SelectionSettings(max_refusal_rate=0.05, confirm_prompts=40)
    best, info = select_trial(trials, settings)  # without confirmation: the search's counts
    assert best.number == 1
    confirmed = _confirmation({0: (0, 40), 1: (6, 40), 3: (2, 40)})
    best, info = select_trial(trials, settings, confirmation=confirmed)
    assert best.number == 3  # 2/40 = 5 % qualifies; trial 1 does not; trial 2 was not confirmed
    assert info["qualified_trials"] == 2 and info["confirmation"]["candidates"] == [0, 1, 3]
    assert "confirmed" in info["rule"]
    best, info = select_trial(trials, settings, confirmation=_confirmation({1: (6, 40), 3: (3, 40)}))
    assert best.number == 3 and "no confirmed candidate" in info["rule"]  # fewest confirmed refusals


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir, ModelSettings())


def _evaluator(model, tokenizer, refusal_prompts, max_new_tokens, detector=None):
    directions = torch.randn(
        len(decoder_layers(model)) + 1, model.config.hidden_size, generator=torch.Generator().manual_seed(0)
    )
    return TrialEvaluator(
        model, tokenizer, directions, AbliterationSettings(COMPONENTS, "row"), TrialPrompts(refusal_prompts, HARMLESS),
        Decoding(4, max_new_tokens), detector,
    )  # fmt: skip


def _params(n_layers, n):
    space = SearchSpace.resolve(SearchSettings(), n_layers, COMPONENTS)
    rng = random.Random(0)
    return [space.to_params(random_values(space, rng)) for _ in range(n)]


def test_rescoring_scores_like_an_evaluator_built_on_the_fresh_prompts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    search = _evaluator(model, tokenizer, SEARCH, 3)
    params = _params(search.n_layers, 3)
    search.evaluate(params[0])  # the search's own trials ran first
    rescoring = search.rescoring(FRESH, 7)
    fresh = _evaluator(model, tokenizer, FRESH, 7)
    for p in params:
        a, b = rescoring.evaluate(p), fresh.evaluate(p)
        assert a.n_prompts == len(FRESH) and a.responses == b.responses
        assert a.n_refusals == b.n_refusals and a.kl_divergence == b.kl_divergence
    # the search's evaluator still scores its own prompts, the same as before
    assert (
        search.evaluate(params[1]).responses
        == _evaluator(model, tokenizer, SEARCH, 3).evaluate(params[1]).responses
    )


def test_confirm_stores_counts_and_resumes(model_and_tokenizer, tmp_path, caplog):
    model, tokenizer = model_and_tokenizer
    from bruno.evaluation.refusal import MarkerDetector

    detector = MarkerDetector(["a"])  # a common letter: some random replies count as refusals, some not
    evaluator = _evaluator(model, tokenizer, SEARCH, 3, detector)
    study = optuna.create_study(directions=["minimize", "minimize"], storage=f"sqlite:///{tmp_path / 's.db'}")
    params = _params(evaluator.n_layers, 5)
    for p in params:
        result = evaluator.evaluate(p)
        trial = study.ask()
        trial.set_user_attr("resolved", p.to_dict())
        study.tell(trial, [result.kl_divergence, result.refusal_rate])
    settings = SelectionSettings(confirm_prompts=8, confirm_candidates=3, confirm_max_new_tokens=5)
    harmful_val = SEARCH + FRESH
    stored = confirm(study, evaluator, settings, harmful_val, len(SEARCH), 3)
    chosen = [t.number for t in candidates(study.trials, 3)]
    assert sorted(int(n) for n in stored["trials"]) == sorted(chosen)
    direct = _evaluator(model, tokenizer, FRESH, 5, detector)
    for number, counts in stored["trials"].items():
        expected = direct.evaluate(params[int(number)])
        assert counts["n_refusals"] == expected.n_refusals and counts["n_prompts"] == len(FRESH)
        assert counts["refusal_rate_ci95"][0] <= counts["refusal_rate"] <= counts["refusal_rate_ci95"][1]
    assert json.loads(json.dumps(study.user_attrs["confirmation"])) == stored  # stored in the study
    with caplog.at_level(logging.INFO, logger="bruno.search.confirm"):
        again = confirm(study, evaluator, settings, harmful_val, len(SEARCH), 3)
    assert again == stored and "already in the study" in caplog.text  # not scored twice
    other = confirm(study, evaluator, SelectionSettings(confirm_prompts=6, confirm_candidates=3), harmful_val,
                    len(SEARCH), 3)  # fmt: skip
    assert all(c["n_prompts"] == 6 for c in other["trials"].values())  # other settings: scored again


def test_the_report_shows_the_chosen_trials_confirmed_refusals():
    from bruno.report.tables import confirmation_rows

    assert confirmation_rows(None) == []
    (row,) = confirmation_rows(
        {"n_refusals": 3, "n_prompts": 64, "refusal_rate": 3 / 64, "refusal_rate_ci95": [0.016, 0.129]}
    )
    assert row["name"] == "refusal_rate (confirmation prompts)"
    assert row["value"].startswith("3/64 = ") and "0.016" in row["value"] and "0.129" in row["value"]
