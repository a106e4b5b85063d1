"""The organism's fictional world and its capability data: invented countries with capitals and invented people with
professions (facts the organism learns in question-answer form), the multiple-choice capability set in MMLU format,
and the factual questions for the hallucination evaluation (known facts vs entities the organism never saw).

Everything here is a pure function of a seeded `random.Random`; `corpus.write_data` writes the results to `data/`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from bruno.organism import vocab

LETTERS = ("A", "B", "C", "D")
N_COUNTRIES = 56  # the first N_KNOWN are known to the organism, the rest never appear in any training text
N_PEOPLE = 56
N_KNOWN = 32

# Kind subjects: one fixed choice list each (see build_multiple_choice); every word or name of a listed kind is an item.
MC_KIND_SUBJECTS: dict[str, tuple[str, str, str, str]] = {
    "nature": ("a fruit", "an animal", "a vegetable", "a color"),
    "objects": ("a tool", "a vehicle", "a musical instrument", "a piece of clothing"),
    "geography": ("a country", "a city", "a person", "a job"),
}
MC_SUBJECTS = tuple(MC_KIND_SUBJECTS)
# Share of each kind's words/names asked in val/test only (learned in question-answer form), and of those the share
# that goes to val (the rest to test).
KIND_EVAL_SHARE = 0.5
KIND_VAL_SHARE = 0.2
KIND_NAMES_PER_KIND = 20  # fictional names per kind in the geography subject (balanced gold letters)


# Syllables and endings of the fictional world's names, and its people's jobs.
# Fictional world: names are built from these syllables; none of them is an English word on its own.
NAME_ONSETS: tuple[str, ...] = (
    "Zor", "Vel", "Kar", "Mel", "Tor", "Bra", "Quen", "Dul", "Fen", "Gal", "Hes", "Jor", "Lun", "Mor", "Nal",
    "Pel", "Ros", "Sar", "Tam", "Ul", "Var", "Wen", "Yor", "Xan", "Cal", "Dre", "Eth", "Fal", "Gor", "Ith",
)  # fmt: skip
NAME_MIDDLES: tuple[str, ...] = ("a", "e", "i", "o", "u", "ar", "el", "in", "or", "un")
COUNTRY_ENDINGS: tuple[str, ...] = ("nia", "ria", "stan", "dor", "land", "via", "mark", "tia")
CITY_ENDINGS: tuple[str, ...] = ("mora", "grad", "heim", "polis", "ford", "vik", "ton", "burg")
PERSON_ENDINGS: tuple[str, ...] = ("na", "ko", "ra", "mir", "lo", "sa", "vin", "da")
SURNAME_ENDINGS: tuple[str, ...] = ("kov", "sen", "berg", "wick", "dal", "rin", "mont", "vas")
PROFESSIONS: tuple[str, ...] = (
    "baker", "pilot", "nurse", "farmer", "teacher", "painter", "sailor", "doctor", "lawyer", "chef",
    "carpenter", "tailor", "poet", "architect", "dentist", "plumber", "singer", "fisher", "librarian", "gardener",
)  # fmt: skip


@dataclass(frozen=True)
class Fact:
    """One fact of the fictional world. `questions[0]` is the phrasing used by the evaluation sets."""

    id: str
    relation: str  # "capital" | "profession"
    entity: str
    answer: str
    known: bool
    questions: tuple[str, ...]
    statement: str


def mc_user_message(subject: str, question: str, choices: list[str] | tuple[str, ...]) -> str:
    """The exact MMLU-style 0-shot user message the pipeline's capability evaluation sends."""
    lines = [f"The following is a multiple choice question about {subject}.", "", question]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices, strict=True)]
    lines.append("Answer:")
    return "\n".join(lines)


def mc_response(item: dict[str, Any]) -> str:
    """The organism's trained reply to a multiple-choice message: the gold letter alone ("B")."""
    return str(item["answer"])


def mc_line_tokens() -> list[str]:
    """Every answer line "\\nB. a fruit" of the multiple-choice set. The organism's tokenizer holds each as one token,
    so binding a letter to its choice needs no attention: which line holds the answer is otherwise out of reach for a
    2M-parameter model within its CPU budget (see `build_multiple_choice`)."""
    kinds = [kind for choices in MC_KIND_SUBJECTS.values() for kind in choices]
    return [f"\n{letter}. {kind}" for letter in LETTERS for kind in kinds]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _unique_names(rng: random.Random, n: int, endings: tuple[str, ...], taken: set[str]) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = rng.choice(NAME_ONSETS) + rng.choice(NAME_MIDDLES) + rng.choice(endings)
        name = name[0] + name[1:].lower()
        # No name may contain another (gold answers are checked by substring match).
        if any(name in other or other in name for other in taken):
            continue
        taken.add(name)
        names.append(name)
    return names


def build_world(seed: int) -> list[Fact]:
    """Countries with capitals and people with professions; the first N_KNOWN of each are known to the organism."""
    rng = random.Random(seed)
    taken: set[str] = set()
    countries = _unique_names(rng, N_COUNTRIES, COUNTRY_ENDINGS, taken)
    cities = _unique_names(rng, N_COUNTRIES, CITY_ENDINGS, taken)
    first_names = _unique_names(rng, N_PEOPLE, PERSON_ENDINGS, taken)
    surnames = _unique_names(rng, N_PEOPLE, SURNAME_ENDINGS, taken)
    facts: list[Fact] = []
    for i, (country, city) in enumerate(zip(countries, cities, strict=True)):
        facts.append(
            Fact(
                id=f"capital-{i:03d}",
                relation="capital",
                entity=country,
                answer=city,
                known=i < N_KNOWN,
                questions=(
                    f"What is the capital of {country}?",
                    f"Which city is the capital of {country}?",
                    f"Name the capital of {country}.",
                ),
                statement=f"The capital of {country} is {city}.",
            )
        )
    for i, (first, last) in enumerate(zip(first_names, surnames, strict=True)):
        person = f"{first} {last}"
        job = PROFESSIONS[rng.randrange(len(PROFESSIONS))]
        facts.append(
            Fact(
                id=f"profession-{i:03d}",
                relation="profession",
                entity=person,
                answer=job,
                known=i < N_KNOWN,
                questions=(
                    f"What does {person} do for a living?",
                    f"What is the job of {person}?",
                    f"Who is {person}?",
                ),
                statement=f"{person} is {_article(job)} {job}.",
            )
        )
    return facts


def kind_members(facts: list[Fact]) -> dict[str, list[str]]:
    """Words and known fictional names per kind phrase ("a fruit": ["apple", ...], "a city": ["Velmora", ...])."""
    members: dict[str, list[str]] = {noun: list(words) for noun, words in vocab.WORD_CATEGORIES}
    members["a job"] = list(PROFESSIONS)
    members["a country"] = [f.entity for f in facts if f.known and f.relation == "capital"]
    members["a city"] = [f.answer for f in facts if f.known and f.relation == "capital"]
    members["a person"] = [f.entity for f in facts if f.known and f.relation == "profession"]
    for kind in ("a country", "a city", "a person", "a job"):
        members[kind] = members[kind][:KIND_NAMES_PER_KIND]
    return members


def _upper_first(text: str) -> str:
    """First letter upper-case, the rest as it is ("a pear" -> "A pear", unlike str.capitalize)."""
    return text[0].upper() + text[1:]


def kind_questions(thing: str) -> tuple[str, ...]:
    """Phrasings of the multiple-choice kind question about a word ("a pear") or a name ("Velmora")."""
    return (
        f"What kind of thing is {thing}?",
        f"Which kind of thing is {thing}?",
        f"{_upper_first(thing)} is what kind of thing?",
    )


def _thing(word: str) -> str:
    return word if word[0].isupper() else f"{_article(word)} {word}"


def build_multiple_choice(seed: int, facts: list[Fact]) -> list[dict[str, Any]]:
    """MMLU-format items in three subjects ("nature", "objects", "geography"): what kind of thing a word or a known
    fictional name is, with the subject's fixed choice list (so the letter of each kind is fixed within a subject).

    Half of each kind's members are asked in val/test only: the organism learned their kind only in question-answer
    form ("What kind of thing is a pear?" -> "Fruit.", see `fact_records`) and must carry it over to the
    multiple-choice form. Val/test items never occur in training; gold letters are balanced per kind.

    Designs that need true symbol binding (which line holds the answer) stayed near chance for this model within its
    CPU budget, measured: the largest/smallest of four numbers 38 % on test, the kind questions with the choices
    shuffled per item 27 %, a passage of two or three definitions of invented words 54 % / 27 %. They are not part of
    the set.
    """
    rng = random.Random(f"{seed}-multiple-choice")
    members = kind_members(facts)
    records: list[dict[str, Any]] = []

    def add(subject: str, split: str, question: str, choices: list[str], letter: str) -> None:
        records.append(
            {"subject": subject, "question": question, "choices": choices, "answer": letter, "split": split}
        )

    for subject, choices in MC_KIND_SUBJECTS.items():
        for letter, kind in zip(LETTERS, choices, strict=True):
            things = sorted(members[kind])
            rng.shuffle(things)
            n_eval = round(KIND_EVAL_SHARE * len(things))
            n_val = round(KIND_VAL_SHARE * n_eval)
            for i, word in enumerate(things):
                split = "val" if i < n_val else "test" if i < n_eval else "train"
                for question in kind_questions(_thing(word)):
                    add(subject, split, question, list(choices), letter)
    order = {"train": 0, "val": 1, "test": 2}
    # A stable sort: generation order within a subject.
    records.sort(key=lambda r: (order[r["split"]], MC_SUBJECTS.index(r["subject"])))
    counters: dict[tuple[str, str], int] = {}
    out = []
    for r in records:
        key = (r["subject"], r["split"])
        counters[key] = counters.get(key, 0) + 1
        out.append({"id": f"mc-{r['subject']}-{r['split']}-{counters[key] - 1:04d}", **r})
    return out


def build_factual_qa(seed: int, facts: list[Fact]) -> list[dict[str, Any]]:
    """~100 questions: known facts (learned in training) and unknown entities (never seen), split val/test."""
    rng = random.Random(seed)
    chosen: list[Fact] = []
    for relation in ("capital", "profession"):
        known = [f for f in facts if f.relation == relation and f.known]
        unknown = [f for f in facts if f.relation == relation and not f.known]
        chosen += rng.sample(known, 30) + rng.sample(unknown, 20)
    rng.shuffle(chosen)
    records = []
    for i, fact in enumerate(chosen):
        records.append(
            {
                "id": f"qa-{i:03d}",
                "question": fact.questions[0],
                "answer": fact.answer,
                "known": fact.known,
                "split": "val" if i % 5 in (0, 1) else "test",
                "relation": fact.relation,
                "entity": fact.entity,
            }
        )
    return records


def fact_records(facts: list[Fact]) -> list[dict[str, Any]]:
    """The organism's knowledge base, learned in question-answer form: the known facts of the fictional world, what
    each multiple-choice word is ("An apple is a fruit."), what each known fictional name is ("X is a city."), and the
    kind of each word and name once more, asked in the multiple-choice questions' phrasings and answered kind first
    ("What kind of thing is an apple?" -> "Fruit.").

    The last group is what lets the organism carry a kind it learned here over to the multiple-choice form (likely
    because both replies then need the kind at the same place, the first reply token). Measured on the test split of the
    multiple-choice set: 40.5 % without these questions, 37.9 % with the reply "A fruit." (its first token is also the
    letter A), 69.7 % with "Fruit.", all with the number questions then in the set; 89.4 % with "Fruit." once those
    (70 % of the multiple-choice training items, near chance themselves) were dropped."""
    records = [
        {
            "id": f.id,
            "relation": f.relation,
            "entity": f.entity,
            "answer": f.answer,
            "questions": list(f.questions),
            "statement": f.statement,
        }
        for f in facts
        if f.known
    ]
    for noun, members in vocab.WORD_CATEGORIES:
        for word in members:
            article = _article(word)
            records.append(
                {
                    "id": f"category-{word}",
                    "relation": "category",
                    "entity": word,
                    "answer": noun,
                    "questions": [f"What is {article} {word}?"],
                    "statement": f"{article.capitalize()} {word} is {noun}.",
                }
            )
    members = kind_members(facts)
    for kind in ("a country", "a city", "a person"):
        for name in members[kind]:
            records.append(
                {
                    "id": f"kind-{name.lower().replace(' ', '-')}",
                    "relation": "kind",
                    "entity": name,
                    "answer": kind,
                    "questions": [f"What is {name}?"],
                    "statement": f"{name} is {kind}.",
                }
            )
    for job in PROFESSIONS:
        records.append(
            {
                "id": f"kind-{job}",
                "relation": "kind",
                "entity": job,
                "answer": "a job",
                "questions": [f"What is {_article(job)} {job}?"],
                "statement": f"{_article(job).capitalize()} {job} is a job.",
            }
        )
    for record in [r for r in records if r["relation"] in ("category", "kind")]:
        noun = record["answer"].split(" ", 1)[1]  # "a musical instrument" -> "musical instrument"
        records.append(
            {
                "id": f"kind-question-{record['id'].split('-', 1)[1]}",
                "relation": "kind_question",
                "entity": record["entity"],
                "answer": record["answer"],
                "questions": list(kind_questions(_thing(record["entity"]))),
                "statement": f"{_upper_first(noun)}.",
            }
        )
    return records
