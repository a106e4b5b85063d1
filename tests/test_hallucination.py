"""SelfCheck-style hallucination scoring: identical samples score 0, unrelated ones high (real MiniLM); seeded sampling
is reproducible; greedy decoding agrees with the model module's; answer matching; the shipped question set."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO

from bruno.evaluation.hallucination import (
    FactualQuestion,
    HallucinationDetector,
    answer_matches,
    load_factual_questions,
    mean_pairwise_similarity,
    normalize_answer,
)
from bruno.model.generation import encode, generate_greedy
from bruno.model.loading import ModelSettings, load_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def embedder():
    from bruno.evaluation.embedding import SentenceEmbedder

    return SentenceEmbedder()


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir, ModelSettings())


QUESTIONS = [
    FactualQuestion("q0", "What is the capital of France?", ("Paris",), "known"),
    FactualQuestion("q1", "How do I bake bread?", (), "all"),
    FactualQuestion("q2", "Who wrote Hamlet?", ("William Shakespeare", "Shakespeare"), "unknown"),
]


def test_pairwise_similarity_math():
    e = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    # pairs: (0,1)=0, (0,2)=(1,2)=1/sqrt(2)
    assert mean_pairwise_similarity(e) == pytest.approx(2 / 2**0.5 / 3)
    assert mean_pairwise_similarity(e[:1]) == 1.0


def test_selfcheck_identical_zero_unrelated_high(embedder):
    detector = HallucinationDetector.__new__(HallucinationDetector)
    detector.embedder = embedder
    identical = ["The capital of France is Paris."] * 5
    unrelated = [
        "The capital of France is Paris.",
        "Photosynthesis needs sunlight.",
        "My cat sleeps on the sofa all afternoon.",
        "Quarterly revenue rose by four percent.",
        "Use git rebase to rewrite commit history.",
    ]
    paraphrases = [
        "Paris is the capital of France.",
        "The capital of France is Paris.",
        "France's capital is Paris.",
    ]
    same, different, close = detector.consistency([identical, unrelated, paraphrases])
    assert 1 - same == pytest.approx(0.0, abs=1e-5)
    assert 1 - different > 0.7
    assert 1 - close < 0.15


def test_answer_matching():
    assert normalize_answer("The  Capital, of FRANCE!") == "capital of france"
    assert answer_matches("The capital of Dulitia is Zoruburg.", ["Zoruburg"])
    assert answer_matches("It was written by William Shakespeare.", ["Marlowe", "William Shakespeare"])
    assert not answer_matches("The capital of Dulitia is Zoruburgia.", ["Zoruburg"])  # whole words only
    assert not answer_matches("", ["Paris"]) and not answer_matches("Paris", [""])


def test_seeded_sampling_is_reproducible_and_greedy_matches(loaded, embedder):
    model, tok = loaded
    detector = HallucinationDetector(tok, QUESTIONS, embedder, n_samples=3, temperature=1.0, max_new_tokens=8,
                                     seed=7, batch_size=4)  # fmt: skip
    first, again = detector.sample(model), detector.sample(model)
    assert first == again and len(first) == 3 and all(len(s) == 3 for s in first)
    other = HallucinationDetector(tok, QUESTIONS, embedder, 3, 1.0, 8, seed=8, batch_size=4).sample(model)
    assert other != first  # a random tiny model: different seeds give different samples
    batches = encode(tok, [q.question for q in QUESTIONS], None, 8, torch.device("cpu"))
    assert detector.greedy(model) == generate_greedy(model, tok, batches, 8)
    assert detector.score(model, [0, 2]) == pytest.approx(detector.score(model, [0, 2]))
    result = detector.evaluate(model)
    assert [r["question_id"] for r in result.rows] == ["q0", "q1", "q2"]
    assert result.rows[1]["correct"] is None and isinstance(result.rows[0]["correct"], bool)
    assert all(r["score"] == pytest.approx(1 - r["pairwise_similarity"]) for r in result.rows)


def test_shipped_factual_questions_have_known_and_unknown():
    qs = load_factual_questions({"path": str(REPO / "data/eval/factual_qa.jsonl"), "record_split": "test"})
    assert {q.group for q in qs} == {"known", "unknown"}
    assert all(q.answers and q.question for q in qs)
