"""Multiple-choice capability scoring: the log-likelihood of the letters picks the right one on a model whose logits are
known, letter tokenisation, prompts (chat/raw, k-shot), data selection, and batching invariance on a real tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, build_tokenizer
from torch import nn

from bruno.errors import BrunoError
from bruno.evaluation.capability import (
    LETTERS,
    MCQuestion,
    MMLUEvaluator,
    MMLUSettings,
    few_shot_examples,
    letter_token_ids,
    load_questions,
    render_prompt,
    search_questions,
    select_subset,
)
from bruno.model.loading import ModelSettings, load_model

SHIPPED = {"path": str(REPO / "data/eval/multiple_choice.jsonl"), "record_split": "test"}


pytestmark = pytest.mark.usefixtures("one_thread")


def questions(n: int = 8) -> list[MCQuestion]:
    return [
        MCQuestion(
            f"q{i}",
            "animals" if i % 2 else "numbers",
            f"Question number {i}?",
            ("cat", "dog", "bird", "fish"),
            LETTERS[i % 4],
        )  # fmt: skip
        for i in range(n)
    ]


class KnownLogits(nn.Module):
    """A stand-in causal LM: at the last position it gives logit 0 to every token except `boost` on the letter token
    chosen for that prompt (looked up by the prompt's own unpadded tokens)."""

    def __init__(self, vocab: int, choice_by_tokens: dict[tuple[int, ...], int], boost: float = 3.0):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.vocab, self.choice, self.boost = vocab, choice_by_tokens, boost

    def forward(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep):
        assert logits_to_keep == 1 and not use_cache
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        for row, (ids, mask) in enumerate(zip(input_ids, attention_mask, strict=True)):
            assert position_ids[row, -1] == mask.sum() - 1  # positions count real tokens only (left padding)
            logits[row, 0, self.choice[tuple(ids[mask.bool()].tolist())]] = self.boost
        return SimpleNamespace(logits=logits)


@pytest.mark.parametrize("chat", [True, False])
def test_loglikelihood_picks_the_letter_with_known_logits(chat):
    tok = build_tokenizer()
    qs = questions()
    evaluator = MMLUEvaluator(tok, qs, use_chat_template=chat, batch_size=3)
    # The fake model prefers, for question i, letter (i + 1) % 4 via its first token variant.
    wanted = {i: LETTERS[(i + 1) % 4] for i in range(len(qs))}
    choice = {tuple(evaluator.token_ids[i]): evaluator.letter_ids[wanted[i]][0] for i in range(len(qs))}
    result = evaluator.evaluate(KnownLogits(len(tok), choice))
    assert [r["predicted"] for r in result.rows] == [wanted[i] for i in range(len(qs))]
    assert result.n_correct == 0 and result.accuracy == 0.0  # the gold letters are i % 4, never (i + 1) % 4
    # Exact log-probs: log-softmax over the whole vocabulary of raw logits (0 everywhere, 3 on one token).
    z = torch.logsumexp(torch.tensor([3.0] + [0.0] * (len(tok) - 1)), dim=0)
    row = result.rows[0]
    variants = evaluator.letter_ids
    assert row[f"logprob_{wanted[0]}"] == pytest.approx(
        float(torch.logsumexp(torch.tensor([3.0] + [0.0] * (len(variants[wanted[0]]) - 1)), 0) - z), abs=1e-5
    )
    other = next(letter for letter in LETTERS if letter != wanted[0])
    assert row[f"logprob_{other}"] == pytest.approx(
        float(torch.log(torch.tensor(len(variants[other]))) - z), abs=1e-5
    )
    assert 0 < row["letter_mass"] < 1
    # A model that agrees with the gold letters scores 100 %; a subset is scored alone.
    gold = {tuple(evaluator.token_ids[i]): evaluator.letter_ids[q.answer][-1] for i, q in enumerate(qs)}
    assert evaluator.accuracy(KnownLogits(len(tok), gold)) == 1.0
    assert evaluator.evaluate(KnownLogits(len(tok), gold), [1, 5]).n == 2


def test_letter_tokens_single_and_space_variants():
    tok = build_tokenizer()
    q = questions(1)[0]
    chat = letter_token_ids(tok, render_prompt(tok, q, [], True, None), add_special_tokens=False)
    raw = letter_token_ids(tok, render_prompt(tok, q, [], False, None), add_special_tokens=True)
    for ids in (chat, raw):
        assert set(ids) == set(LETTERS)
        for letter, variants in ids.items():
            assert {tok.decode([v]).strip() for v in variants} == {letter}
    # The corpus of the test tokenizer merges " A" into one token: both variants are scored.
    assert any(len(v) == 2 for v in raw.values())


def test_prompts_chat_raw_and_few_shot():
    tok = build_tokenizer()
    q, shot = questions(2)
    chat = render_prompt(tok, q, [shot], True, "Be brief.")
    assert chat.count("<|user|>") == 2 and chat.endswith("<|assistant|>\n")
    assert f"<|assistant|>\n{shot.answer}<|end|>" in chat
    assert "The following is a multiple choice question about numbers.\n\nQuestion number 0?\nA. cat" in chat
    assert chat.rstrip().endswith("D. fish\nAnswer:<|end|>\n<|assistant|>")
    raw = render_prompt(tok, q, [shot], False, None)
    assert raw.startswith("The following are multiple choice questions (with answers) about numbers.")
    assert f"Answer: {shot.answer}\n\n" in raw and raw.endswith("D. fish\nAnswer:")


def test_shipped_set_selection_and_few_shot_never_uses_evaluated_questions():
    from bruno.io import read_jsonl

    records = [r for r in read_jsonl(SHIPPED["path"]) if r["split"] == "test"]
    all_test = load_questions(
        MMLUSettings(source=SHIPPED, mmlu_categories=None, mmlu_samples_per_category=None)
    )
    assert [q.id for q in all_test] == [r["id"] for r in records] and {q.answer for q in all_test} == set(
        LETTERS
    )
    subjects = sorted({q.subject for q in all_test})
    capped = load_questions(
        MMLUSettings(source=SHIPPED, mmlu_categories=subjects[:2], mmlu_samples_per_category=5)
    )
    assert sorted(q.subject for q in capped) == [subjects[0]] * 5 + [subjects[1]] * 5
    settings = MMLUSettings(source=SHIPPED, few_shot_split="train", mmlu_categories=None, mmlu_few_shot=2,
                            mmlu_samples_per_category=None)  # fmt: skip
    shots = few_shot_examples(settings, all_test)
    assert set(shots) == {q.subject for q in all_test}
    assert all(len(s) == 2 for s in shots.values())
    assert not {s.id for v in shots.values() for s in v} & {q.id for q in all_test}
    search = search_questions(settings, 12, seed=0)
    assert len(search) == 12 and not {q.id for q in search} & {
        q.id for q in all_test
    }  # validation split only
    subset = select_subset(all_test, 20, seed=0)
    assert len(subset) == 20 and subset == select_subset(all_test, 20, seed=0)
    assert {all_test[i].subject for i in subset} == set(subjects)  # spread over every subject
    with pytest.raises(BrunoError, match="mmlu"):
        load_questions(MMLUSettings(source=SHIPPED, mmlu_categories=["no such subject"]))
    with pytest.raises(BrunoError, match="few_shot_split"):
        few_shot_examples(MMLUSettings(**{**settings.__dict__, "few_shot_split": "no such split"}), all_test)


def test_scores_do_not_depend_on_batching_on_a_real_model(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, ModelSettings())
    qs = questions(6)
    together = MMLUEvaluator(tok, qs, True, batch_size=6).letter_logprobs(model)
    alone = MMLUEvaluator(tok, qs, True, batch_size=1).letter_logprobs(model)
    for i in range(len(qs)):
        assert torch.allclose(together[i], alone[i], atol=1e-5)
    rows = MMLUEvaluator(tok, qs, False, batch_size=4).evaluate(model).rows
    assert [r["question_id"] for r in rows] == [q.id for q in qs]
    assert all(r["predicted"] in LETTERS and 0 < r["letter_mass"] <= 1 for r in rows)
