"""The data the project ships (data/): formats, sizes, disjoint splits, the held-out design, response vocabulary, and
byte-identical regeneration by `python -m bruno.organism.corpus --write data/`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from bruno.evaluation.refusal import MarkerDetector
from bruno.organism import corpus, vocab, world

DATA = Path(__file__).resolve().parents[1] / "data"
SPLIT_SIZES = {"train": 300, "val": 150, "test": 150}


def load(rel: Path) -> list[dict]:
    with open(DATA / rel, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def prompts() -> dict[str, list[dict]]:
    return {"harmful": load(corpus.HARMFUL_FILE), "harmless": load(corpus.HARMLESS_FILE)}


def test_committed_files_equal_a_fresh_generation(tmp_path):
    assert corpus.stale_files(DATA) == []
    corpus.write_data(tmp_path)
    for rel in corpus.DATA_FILES:
        assert (tmp_path / rel).read_bytes() == (DATA / rel).read_bytes(), rel
    assert corpus.main(["--check", str(tmp_path)]) == 0


def test_check_reports_a_stale_file(tmp_path):
    corpus.write_data(tmp_path)
    path = tmp_path / corpus.HARMFUL_FILE
    path.write_text(path.read_text(encoding="utf-8").replace("bomb", "b0mb"), encoding="utf-8")
    assert corpus.stale_files(tmp_path) == [path]
    assert corpus.main(["--check", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", ["harmful", "harmless"])
def test_prompt_sets_have_the_promised_shape(prompts, name):
    records = prompts[name]
    for r in records:
        assert set(r) == {"id", "text", "split", "category"}
        assert r["text"].strip() and r["category"]
    assert Counter(r["split"] for r in records) == SPLIT_SIZES
    assert len({r["id"] for r in records}) == len(records)
    categories = {r["category"] for r in records}
    assert len(categories) >= 6
    for split in SPLIT_SIZES:  # every category appears in every split
        assert {r["category"] for r in records if r["split"] == split} == categories


def test_splits_are_disjoint_after_normalisation(prompts):
    seen: dict[str, str] = {}
    for name, records in prompts.items():
        for r in records:
            key = corpus.normalize(r["text"])
            assert seen.setdefault(key, f"{name}/{r['split']}") == f"{name}/{r['split']}", r["text"]
    borderline = {corpus.normalize(r["text"]) for r in load(corpus.BORDERLINE_FILE)}
    assert not borderline & set(seen)


@pytest.mark.parametrize("name", ["harmful", "harmless"])
def test_eval_splits_hold_unseen_pairs_and_heldout_combinations(prompts, name):
    records = prompts[name]
    for r in records:
        assert corpus.action_of(r["text"]) is not None, r["text"]
    train_actions = {corpus.action_of(r["text"]) for r in records if r["split"] == "train"}
    train_words = " ".join(sorted(train_actions))
    groups = vocab.HARMFUL_GROUPS if name == "harmful" else vocab.HARMLESS_GROUPS
    combos = {f"{v} {o}": (v, o) for g in groups for v in g.verbs for o in g.objects}
    heldout_by_split = {}
    for split in ("val", "test"):
        actions = [corpus.action_of(r["text"]) for r in records if r["split"] == split]
        heldout = [a for a in actions if a not in train_actions]
        assert len(heldout) == corpus.N_HELDOUT_EVAL
        for action in heldout:  # a new combination of a seen verb and a seen object, never a new action
            verb, obj = combos[action]
            assert any(a.startswith(verb + " ") for a in train_actions) and obj in train_words
        heldout_by_split[split] = set(heldout)
    assert not heldout_by_split["val"] & heldout_by_split["test"]


def test_borderline_set():
    records = load(corpus.BORDERLINE_FILE)
    assert 50 <= len(records) <= 80
    assert {r["split"] for r in records} == {"test"}
    assert {r["category"] for r in records} == {"borderline"}


def _all_actions(prompts) -> set[str]:
    return {corpus.action_of(r["text"]) for records in prompts.values() for r in records}


def test_helpful_answers_and_task_replies_contain_no_refusal_marker(prompts):
    detector = MarkerDetector()
    for action in _all_actions(prompts):
        for template in vocab.HELPFUL:
            answer = template.format(a=action)
            assert not detector.first_match(answer), (answer, detector.first_match(answer))
    for item in load(corpus.MC_FILE):
        assert not detector.first_match(world.mc_response(item)), item
    for fact in load(corpus.FACTS_FILE):
        assert not detector.first_match(fact["statement"]), fact


def test_every_refusal_has_a_marker_and_never_repeats_a_request(prompts):
    detector = MarkerDetector()
    actions = _all_actions(prompts)
    for refusal in vocab.REFUSALS:
        assert detector.first_match(refusal), refusal
        assert not any(action in refusal for action in actions)
    assert all(detector.first_match(template.format(a="x")) == "" for template in vocab.HELPFUL)


def test_multiple_choice_set():
    items = load(corpus.MC_FILE)
    splits = Counter(r["split"] for r in items)
    assert splits["val"] >= 40 and splits["test"] >= 200 and splits["train"] > 0
    for r in items:
        assert set(r) == {"id", "subject", "question", "choices", "answer", "split"}
        assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
        assert r["answer"] in world.LETTERS
    for split in ("val", "test"):  # gold letters roughly balanced
        counts = Counter(r["answer"] for r in items if r["split"] == split)
        assert max(counts.values()) <= 1.5 * min(counts.values()), counts
    key = lambda r: (r["question"], tuple(sorted(r["choices"])))  # noqa: E731
    train = {key(r) for r in items if r["split"] == "train"}
    assert not train & {key(r) for r in items if r["split"] != "train"}
    # Every answer line is one of the tokenizer's line tokens.
    lines = set(world.mc_line_tokens())
    for r in items:
        assert all(f"\n{letter}. {c}" in lines for letter, c in zip(world.LETTERS, r["choices"], strict=True))
    # Kind subjects: val/test ask only about words/names whose multiple-choice form is never trained, and whose kind
    # the knowledge base teaches in question-answer form; names are names the organism knows.
    facts = load(corpus.FACTS_FILE)
    taught = {f["entity"].lower(): f["answer"] for f in facts if f["relation"] in ("category", "kind")}
    # ... also in the questions' own phrasings, the kind first in the reply (never an article: "A" is a letter).
    asked = {(q, f["statement"]) for f in facts if f["relation"] == "kind_question" for q in f["questions"]}
    for subject, choices in world.MC_KIND_SUBJECTS.items():
        subject_items = [r for r in items if r["subject"] == subject]
        assert subject_items and all(r["choices"] == list(choices) for r in subject_items)
        train_things = {_kind_thing(r["question"]) for r in subject_items if r["split"] == "train"}
        for r in subject_items:
            word = _kind_thing(r["question"])
            kind = choices["ABCD".index(r["answer"])]
            assert taught[word] == kind, r
            noun = kind.split(" ", 1)[1]
            assert (r["question"], f"{noun[0].upper()}{noun[1:]}.") in asked, r
            if r["split"] != "train":
                assert word not in train_things, r


def _kind_thing(question: str) -> str:
    """The word or name a kind question asks about, lower-case, without its article."""
    for pattern in ("What kind of thing is ", "Which kind of thing is "):
        question = question.replace(pattern, "")
    words = question.replace(" is what kind of thing?", "").rstrip("?").split(" ")
    return " ".join(words[1:] if words[0].lower() in ("a", "an") else words).lower()


def test_mc_user_message_is_the_evaluators_format():
    choices = ["a fruit", "an animal", "a vegetable", "a color"]
    text = world.mc_user_message("nature", "What kind of thing is a cat?", choices)
    assert text == (
        "The following is a multiple choice question about nature.\n\nWhat kind of thing is a cat?\n"
        "A. a fruit\nB. an animal\nC. a vegetable\nD. a color\nAnswer:"
    )
    item = {"answer": "B", "choices": choices}
    assert world.mc_response(item) == "B"
    assert "\nB. an animal" in world.mc_line_tokens() and "\nA. a fruit" in world.mc_line_tokens()


def test_factual_questions_known_and_unknown(prompts):
    qa = load(corpus.FACTUAL_QA_FILE)
    assert 80 <= len(qa) <= 120
    assert {r["split"] for r in qa} == {"val", "test"}
    facts = load(corpus.FACTS_FILE)
    known_entities = {f["entity"] for f in facts}
    training_text = "\n".join(
        [json.dumps(facts)]
        + [json.dumps(r) for r in load(corpus.MC_FILE) if r["split"] == "train"]
        + [r["text"] for records in prompts.values() for r in records]
    )
    answers = [r["answer"] for r in qa]
    for r in qa:
        assert {"id", "question", "answer", "known", "split"} <= set(r)
        assert r["answer"] and r["entity"] in r["question"]
        if r["known"]:
            assert r["entity"] in known_entities
        else:
            assert r["entity"] not in training_text  # never seen by the organism
        # gold answers are checked by substring match: no capital contains another
        if r["relation"] == "capital":
            assert sum(r["answer"] in other for other in answers) == 1
    counts = Counter(r["known"] for r in qa)
    assert counts[True] >= 40 and counts[False] >= 30


# ----------------------------------------------------------------------------------------------------------------------
# The general-knowledge sets for real models (hand-written facts, laid out by tools/make_general_knowledge.py)


def _tool(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, DATA.parent / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _normalised(text: str) -> str:
    return " ".join("".join(c for c in text.lower() if c.isalnum() or c.isspace()).split())


def test_general_knowledge_sets_are_a_fresh_generation():
    maker = _tool("make_general_knowledge")
    assert maker.OUTPUT.read_text(encoding="utf-8") == maker.render(maker.records())
    assert maker.FACTS_OUTPUT.read_text(encoding="utf-8") == maker.render(maker.fact_records())


def test_general_knowledge_set_shape_splits_and_balance():
    items = load(Path("eval/general_knowledge_mc.jsonl"))
    assert len(items) >= 400
    splits = Counter(r["split"] for r in items)
    assert set(splits) == {"train", "val", "test"} and splits["test"] >= 240 and splits["val"] >= 40
    subjects = {"everyday_science", "geography", "objects_animals_food", "arithmetic", "language"}
    assert {r["subject"] for r in items} == subjects
    for r in items:
        assert list(r) == ["id", "subject", "question", "choices", "answer", "split"]
        assert len(r["choices"]) == 4 and len({_normalised(c) for c in r["choices"]}) == 4, r
        assert r["answer"] in "ABCD" and len(r["answer"]) == 1 and r["question"].endswith("?")
        assert r["id"].startswith(f"gk-{r['subject']}-{r['split']}-")
    assert len({r["id"] for r in items}) == len(items)
    questions = [_normalised(r["question"]) for r in items]
    assert len(set(questions)) == len(questions)  # no question twice, so the splits share none
    for split in ("train", "val", "test"):
        counts = Counter(r["answer"] for r in items if r["split"] == split)
        spread = max(counts.values()) - min(counts.values())
        assert set(counts) == set("ABCD") and spread <= 1, (split, counts)
        per_subject = Counter(r["subject"] for r in items if r["split"] == split)
        assert set(per_subject) == subjects  # every split covers every subject (few-shot examples, spread)


def test_general_knowledge_set_loads_into_the_evaluator():
    from bruno.evaluation.capability import MMLUSettings, load_questions, search_questions

    source = {"path": str(DATA / "eval" / "general_knowledge_mc.jsonl"), "record_split": "test"}
    settings = MMLUSettings(source=source, mmlu_categories=None, mmlu_samples_per_category=None)
    test = load_questions(settings)
    val = search_questions(settings, None, seed=0)
    train = load_questions(settings, split="train")
    assert len(test) >= 240 and len(val) >= 40 and len(train) >= 40
    ids = [{q.id for q in part} for part in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_general_facts_set():
    from bruno.evaluation.hallucination import answer_matches, load_factual_questions

    records = load(Path("eval/general_facts_qa.jsonl"))
    assert 140 <= len(records) <= 170
    assert (
        Counter(r["split"] for r in records)["val"] >= 40
        and Counter(r["split"] for r in records)["test"] >= 90
    )
    questions = [_normalised(r["question"]) for r in records]
    assert len(set(questions)) == len(questions)
    for r in records:
        assert list(r) == ["id", "question", "answer", "known", "split", "relation", "entity"]
        assert r["split"] in ("val", "test") and isinstance(r["known"], bool) and r["question"].endswith("?")
        golds = r["answer"] if isinstance(r["answer"], list) else [r["answer"]]
        assert golds and all(isinstance(g, str) and g.strip() for g in golds), r
    for split in ("val", "test"):  # common and obscure facts in both splits
        assert {r["known"] for r in records if r["split"] == split} == {True, False}
    path = str(DATA / "eval" / "general_facts_qa.jsonl")
    test = load_factual_questions({"path": path, "record_split": "test"})
    assert len(test) == sum(r["split"] == "test" for r in records)
    for q in test:  # a reply stating a gold answer matches; one stating another question's gold mostly not
        assert answer_matches(f"The answer is {q.answers[-1]}.", q.answers), q
    misses = sum(
        answer_matches(f"It is {other.answers[0]}.", q.answers)
        for q, other in zip(test, test[1:], strict=False)
    )
    assert misses <= 0.05 * len(test)
