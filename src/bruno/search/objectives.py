"""The search's optional extra objectives (hallucination score, capability loss) as callables of the hooked model,
each on its validation questions."""

from __future__ import annotations

from typing import Any

from bruno.errors import BrunoError
from bruno.evaluation.stage import EvaluationSettings
from bruno.model.thinking import DEFAULT_FORMAT, ResponseFormat
from bruno.search.space import SearchSettings


def extra_objectives(
    settings: SearchSettings,
    evaluation: EvaluationSettings | None,
    tokenizer: Any,
    system_prompt: str | None,
    seed: int,
    response_format: ResponseFormat = DEFAULT_FORMAT,
) -> dict[str, Any]:
    """Callables of the (hooked) model for the enabled extra objectives, on validation questions only.

    The search rules pass only the `evaluation` keys read here (rules/common.smk, SEARCH_OBJECTIVE_SETTINGS); any
    other key has its default, so a key newly read here must be added there."""
    objectives: dict[str, Any] = {}
    if not (settings.use_hallucination_detection or settings.use_capability_objective):
        return objectives
    if evaluation is None:
        raise BrunoError("extra search objectives need the `evaluation` settings (their question sources)")
    if settings.use_hallucination_detection:
        from bruno.evaluation.embedding import SentenceEmbedder
        from bruno.evaluation.hallucination import HallucinationDetector, load_factual_questions

        hall = evaluation.hallucination_settings()
        source = {**hall.source, "record_split": "val"} if "path" in hall.source else hall.source
        questions = load_factual_questions(source)[: settings.hallucination_check_n_questions]
        detector = HallucinationDetector(
            tokenizer, questions, SentenceEmbedder(hall.embedding_model), settings.hallucination_n_samples,
            hall.temperature, hall.max_new_tokens, seed, system_prompt, response_format=response_format,
        )  # fmt: skip
        objectives["hallucination_score"] = detector.score
    if settings.use_capability_objective:
        from bruno.evaluation.capability import search_questions
        from bruno.evaluation.scoring import build_evaluator

        mmlu = evaluation.mmlu_settings()
        questions = search_questions(mmlu, settings.capability_check_n_questions, seed)
        evaluator = build_evaluator(mmlu, tokenizer, questions, None, system_prompt, response_format.prefix)
        objectives["capability_loss"] = lambda model: 1.0 - evaluator.accuracy(model)
    return objectives
