"""Cloze scoring: each choice's summed token log-probs equal those of a separate plain forward of prompt + choice (chat
and raw text, shared prompt cache and whole sequences, any batch size); length normalisation by characters, checked by
hand on a model whose every next-token distribution is uniform; the config picks the scorer, for the held-out
evaluation and for the search's capability objective alike."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO, build_tokenizer

from bruno.errors import BrunoError
from bruno.evaluation.capability import LETTERS, MCQuestion, MMLUEvaluator, MMLUSettings
from bruno.evaluation.cloze import ClozeEvaluator, cloze_prompt
from bruno.evaluation.scoring import build_evaluator
from bruno.model.loading import ModelSettings, load_model

GENERAL = {"path": str(REPO / "data/eval/general_knowledge_mc.jsonl"), "record_split": "test"}


pytestmark = pytest.mark.usefixtures("one_thread")


def questions() -> list[MCQuestion]:
    return [
        MCQuestion(
            "q0", "animals", "How do I bake bread?", ("first", "a weapon", "Sure", "line by line"), "A"
        ),
        MCQuestion("q1", "animals", "What is a poem?", ("a theme", "bread", "I'm sorry", "write"), "B"),
        MCQuestion(
            "q2", "numbers", "Explain how to write.", ("gather what you need", "A", "B C D", "how"), "C"
        ),
        MCQuestion(
            "q3", "numbers", "Which one?", ("then", "start with a theme and then write", "x", "bake"), "D"
        ),
        MCQuestion("q4", "animals", "Build it?", ("Here is how", "no", "weapon", "first, gather"), "A"),
    ]


def plain_loglik(model, tokenizer, prompt: str, continuation: str, add_special: bool) -> float:
    """Sum of log p(token | everything before) over the continuation's tokens, from one unpadded forward of
    prompt + continuation (the prompt's tokens are those of the prompt alone)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=add_special)["input_ids"]
    full = tokenizer(prompt + continuation, add_special_tokens=add_special)["input_ids"]
    assert full[: len(prompt_ids)] == prompt_ids  # this tokenizer never merges across the boundary here
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(float(logprobs[pos - 1, full[pos]]) for pos in range(len(prompt_ids), len(full)))


@pytest.mark.parametrize("chat", [True, False])
def test_choice_logliks_equal_a_plain_forward(tiny_model_dir, chat):
    model, tok = load_model(tiny_model_dir, ModelSettings())
    qs = questions()
    shots = {"numbers": [qs[0]]}  # a one-shot prompt for some questions: longer, uneven prompts
    expected = torch.zeros(len(qs), 4)
    for i, q in enumerate(qs):
        prompt, separator = cloze_prompt(
            tok, q, shots.get(q.subject, ()), chat, "Be brief." if chat else None
        )
        for k, choice in enumerate(q.choices):
            expected[i, k] = plain_loglik(model, tok, prompt, separator + choice, add_special=not chat)
    assert expected.max() < 0 and len(set(expected.flatten().tolist())) == expected.numel()
    for share in (True, False):
        for batch_size in (1, 3, 5):
            evaluator = ClozeEvaluator(tok, qs, chat, shots, "Be brief." if chat else None, batch_size, share)
            got = evaluator.choice_logliks(model)
            assert torch.allclose(torch.stack([got[i] for i in range(len(qs))]), expected, atol=1e-4), (
                share, batch_size)  # fmt: skip
    subset = evaluator.choice_logliks(model, [3, 1])
    assert sorted(subset) == [1, 3] and torch.allclose(subset[3], expected[3], atol=1e-4)


def test_continuations_are_the_choice_text():
    tok = build_tokenizer()
    qs = questions()
    for chat, separator in ((True, ""), (False, " ")):
        evaluator = ClozeEvaluator(tok, qs, chat)
        for q, item in zip(qs, evaluator.items, strict=True):
            for choice, ids in zip(q.choices, item.choice_ids, strict=True):
                assert tok.decode(ids) == separator + choice
            assert item.choice_chars == tuple(len(c) for c in q.choices)


def test_prompt_formats():
    tok = build_tokenizer()
    q, shot = questions()[1], questions()[0]
    chat, sep = cloze_prompt(tok, q, [shot], True, None)
    assert sep == "" and chat.endswith("<|user|>\nWhat is a poem?<|end|>\n<|assistant|>\n")
    shot_turn = "<|user|>\nHow do I bake bread?<|end|>\n<|assistant|>\nfirst<|end|>"  # the answer's text
    assert shot_turn in chat
    assert "A." not in chat and "a theme" not in chat  # options are never listed
    raw, sep = cloze_prompt(tok, q, [shot], False, None)
    assert (
        sep == " "
        and raw == "Question: How do I bake bread?\nAnswer: first\n\nQuestion: What is a poem?\nAnswer:"
    )


def test_length_normalisation_by_characters_on_a_uniform_model(tiny_model_dir):
    """With every next-token distribution uniform over V tokens, a choice of t tokens has log-likelihood -t log V:
    the unnormalised pick is the choice with the fewest tokens, the acc_norm pick the one with the most characters
    per token, and here they differ."""
    model, tok = load_model(tiny_model_dir, ModelSettings())
    with torch.no_grad():
        model.lm_head.weight.zero_()
    log_v = math.log(model.config.vocab_size)
    q = MCQuestion("u", "animals", "Which?", ("weapon", "how to write", "x", "zqzq"), "B")
    evaluator = ClozeEvaluator(tok, [q], use_chat_template=False)
    tokens = [len(ids) for ids in evaluator.items[0].choice_ids]
    row = evaluator.evaluate(model).rows[0]
    for k, letter in enumerate(LETTERS):
        assert row[f"logprob_{letter}"] == pytest.approx(-tokens[k] * log_v, abs=1e-4)
        assert row[f"logprob_per_char_{letter}"] == pytest.approx(
            -tokens[k] * log_v / len(q.choices[k]), abs=1e-5
        )
    fewest_tokens = LETTERS[min(range(4), key=lambda k: (tokens[k], k))]
    most_chars_per_token = LETTERS[max(range(4), key=lambda k: len(q.choices[k]) / tokens[k])]
    assert row["predicted_unnormalised"] == fewest_tokens == "C"  # " x": 2 tokens, the others 5-6
    assert row["predicted"] == most_chars_per_token == "B" and row["correct"]
    result = evaluator.evaluate(model)
    assert result.scoring == "cloze" and result.n == 1 and result.accuracy == 1.0


def test_the_config_picks_the_scorer():
    tok = build_tokenizer()
    qs = questions()
    assert isinstance(build_evaluator(MMLUSettings(), tok, qs), MMLUEvaluator)
    cloze = build_evaluator(MMLUSettings(scoring="cloze", use_chat_template=False, batch_size=2), tok, qs)
    assert isinstance(cloze, ClozeEvaluator) and cloze.batch_size == 2
    assert tok.decode(cloze.items[0].prompt_ids) == "Question: How do I bake bread?\nAnswer:"  # raw text
    with pytest.raises(BrunoError, match="evaluation.mmlu.scoring"):
        build_evaluator(MMLUSettings(scoring="letters"), tok, qs)


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_capability_objective_uses_the_configured_scoring(tiny_model_dir, scoring):
    from bruno.evaluation.capability import search_questions
    from bruno.evaluation.stage import EvaluationSettings
    from bruno.search.objectives import extra_objectives
    from bruno.search.space import SearchSettings

    model, tok = load_model(tiny_model_dir, ModelSettings())
    mmlu = {"source": GENERAL, "mmlu_categories": None, "mmlu_samples_per_category": None, "scoring": scoring}
    search = SearchSettings(use_capability_objective=True, capability_check_n_questions=40)
    objective = extra_objectives(search, EvaluationSettings(mmlu=mmlu), tok, None, seed=3)["capability_loss"]
    questions = search_questions(MMLUSettings(**mmlu), 40, seed=3)
    assert {q.id for q in questions} and all("-val-" in q.id for q in questions)
    expected = build_evaluator(MMLUSettings(**mmlu), tok, questions).accuracy(model)
    other = build_evaluator(
        MMLUSettings(**{**mmlu, "scoring": "cloze" if scoring == "letter" else "letter"}), tok, questions
    ).accuracy(model)
    assert expected != other  # the two scorings disagree on this model, so the check below tells them apart
    assert objective(model) == pytest.approx(1.0 - expected)


def test_rows_metric_and_csv_columns(tiny_model_dir, tmp_path):
    import pandas as pd

    from bruno.evaluation.stage import mmlu_metric
    from bruno.jobs.evaluate import MMLU_COLUMNS, _write_csv

    model, tok = load_model(tiny_model_dir, ModelSettings())
    settings = MMLUSettings(scoring="cloze", use_chat_template=True)
    result = build_evaluator(settings, tok, questions()).evaluate(model)
    metric = mmlu_metric(result, "test set", settings)
    assert metric["scoring"].startswith("cloze") and "mean_letter_mass" not in metric
    unnormalised = sum(r["predicted_unnormalised"] == r["gold"] for r in result.rows)
    assert metric["accuracy_unnormalised"]["value"] == pytest.approx(unnormalised / 5)
    assert metric["n"] == 5 and metric["value"] == pytest.approx(result.n_correct / 5)
    _write_csv(tmp_path / "mmlu.csv", result.rows, MMLU_COLUMNS["cloze"])
    frame = pd.read_csv(tmp_path / "mmlu.csv")
    assert list(frame.columns) == MMLU_COLUMNS["cloze"] == list(result.rows[0])
    # The letter scorer's file keeps its columns.
    letter_rows = build_evaluator(MMLUSettings(), tok, questions()).evaluate(model).rows
    assert MMLU_COLUMNS["letter"] == list(letter_rows[0]) == [
        "subject", "question_id", "gold", "predicted", "logprob_A", "logprob_B", "logprob_C", "logprob_D",
        "letter_mass", "correct",
    ]  # fmt: skip
    assert "mean_letter_mass" in mmlu_metric(
        build_evaluator(MMLUSettings(), tok, questions()).evaluate(model), "t", MMLUSettings()
    )
