"""Stage `evaluate`: every held-out figure of one model stage -> refusals.csv, mmlu.csv, hallucination.csv, metrics.json.

The base stage also saves the KL reference of every other stage (`harmless_logprobs.pt`): its first-token log-probs on
the harmless test prompts and, when `kl_teacher_forced_tokens` > 0, its first-k greedy reply tokens with their top
log-probs. The sentence-embedding model is loaded once and shared by the neural refusal detector and the hallucination
detector.

The response prefix (`bruno.thinking`) is the base model's: the base stage resolves `model.response_prefix` on the base
model from the train prompts (`base_response_prefix`, as the directions job does) and records it in the KL reference;
every other stage renders its prompts with that recorded prefix, so base, ablated and healed models are measured at the
same positions and their answers judged alike.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bruno.capability import MMLUSettings, build_evaluator, few_shot_examples, load_questions
from bruno.errors import BrunoError
from bruno.evaluate import (
    EvaluationSettings,
    TeacherForcedReference,
    build_teacher_forced_reference,
    generate_responses,
    hallucination_metrics,
    harmless_logprobs,
    mmlu_metric,
    per_prompt_kl,
    refusal_metrics,
    refusal_rows,
    teacher_forced_kl,
)
from bruno.hallucination import HallucinationDetector, load_factual_questions
from bruno.io import atomic_path, atomic_write_json
from bruno.model import ModelSettings, encode, load_model, model_device
from bruno.prompts import read_prompts
from bruno.refusal import HybridDetector, build_detector, held_out_accuracy
from bruno.runtime import peak_memory
from bruno.stats import mean_metric
from bruno.thinking import AUTO, ResponseFormat, base_response_prefix

log = logging.getLogger(__name__)

_LOGPROBS = [f"logprob_{letter}" for letter in "ABCD"]
MMLU_COLUMNS = {  # per evaluation.mmlu.scoring
    "letter": ["subject", "question_id", "gold", "predicted", *_LOGPROBS, "letter_mass", "correct"],
    "cloze": ["subject", "question_id", "gold", "predicted", *_LOGPROBS,
              *(f"logprob_per_char_{letter}" for letter in "ABCD"), "predicted_unnormalised", "correct"],
}  # fmt: skip
HALLUCINATION_COLUMNS = ["question_id", "question", "group", "samples", "pairwise_similarity", "score",
                         "greedy_answer", "gold", "correct"]  # fmt: skip


def _write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str] | None = None) -> None:
    """Every text field quoted: model output can hold a bare carriage return, which readers take for a line end."""
    with atomic_path(path) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)


def task_label(settings: MMLUSettings, is_organism: bool) -> str:
    """How outputs name the multiple-choice set: never 'MMLU' unless it is cais/mmlu."""
    if settings.task_label:
        return settings.task_label
    if "dataset" in settings.source:
        return str(settings.source["dataset"])
    return (
        "organism task set" if is_organism else f"multiple-choice set ({Path(settings.source['path']).name})"
    )


def reference_prefix(path: str | Path, setting: str) -> str:
    """The response prefix the base stage recorded in its KL reference (references from before it recorded one were
    rendered without); an explicit `model.response_prefix` must be the same text."""
    saved = torch.load(path, map_location="cpu", weights_only=True).get("response_prefix", "")
    if setting not in (AUTO, saved):
        raise BrunoError(
            f"{path} was computed with response prefix {saved!r}, but model.response_prefix is {setting!r}; rerun "
            "evaluate_base (snakemake --forcerun evaluate_base)."
        )
    return saved


def _kl_reference(
    write: bool, path: str | Path, model, tokenizer, prompts, system_prompt, settings: EvaluationSettings,
    prefix: str,
) -> tuple[torch.Tensor, TeacherForcedReference | None, torch.Tensor, list[Any]]:  # fmt: skip
    """(base first-token log-probs, teacher-forced reference or None, this model's log-probs, harmless batches)."""
    logprobs = harmless_logprobs(model, tokenizer, prompts, system_prompt, settings.batch_size, prefix)
    texts = [p.text for p in prompts]
    batches = encode(tokenizer, texts, system_prompt, settings.batch_size, model_device(model), prefix)
    ids = [p.id for p in prompts]
    k = settings.kl_teacher_forced_tokens
    if write:
        reference = None
        if k > 0:
            reference = build_teacher_forced_reference(
                model, tokenizer, batches, ids, k, settings.kl_teacher_forced_top_tokens, settings.batch_size
            )
        with atomic_path(path) as tmp:
            saved = {"logprobs": logprobs, "prompt_ids": ids, "teacher_forced_tokens": k, "response_prefix": prefix,
                     "teacher_forced": reference.to_dict() if reference else None}  # fmt: skip
            torch.save(saved, tmp)
        return logprobs, reference, logprobs, batches
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["prompt_ids"] != ids or saved.get("teacher_forced_tokens", 0) != k:
        raise BrunoError(
            f"{path} was computed on other harmless test prompts or another kl_teacher_forced_tokens; rerun "
            "evaluate_base (snakemake --forcerun evaluate_base)."
        )
    reference = TeacherForcedReference(**saved["teacher_forced"]) if saved.get("teacher_forced") else None
    return saved["logprobs"], reference, logprobs, batches


def run(
    stage: str,
    model_path: str,
    model_settings: ModelSettings,
    prompt_paths: dict[str, str],
    settings: EvaluationSettings,
    outputs: dict[str, str | Path],
    base_logprobs_path: str | Path,
    write_base_logprobs: bool,
    seed: int = 0,
    is_organism: bool = False,
    train_prompt_paths: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate one stage; `outputs` names the files: refusals, mmlu, hallucination (CSV) and metrics (JSON). The base
    stage (`write_base_logprobs`) resolves the response prefix from `train_prompt_paths` (harmful, harmless); the
    others read it from the base stage's reference."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    model, tokenizer = load_model(model_path, model_settings)
    system_prompt = model_settings.system_prompt
    if write_base_logprobs:
        if train_prompt_paths is None:
            raise BrunoError("the base evaluation needs the train prompts to resolve model.response_prefix")
        prefix = base_response_prefix(
            model, tokenizer, model_settings, train_prompt_paths["harmful"], train_prompt_paths["harmless"]
        )
    else:
        prefix = reference_prefix(base_logprobs_path, model_settings.response_prefix)
    response_format = ResponseFormat.of(tokenizer, system_prompt, prefix, model_settings.thinking_tags)
    mmlu_settings, halluc_settings = settings.mmlu_settings(), settings.hallucination_settings()
    detector_settings = settings.detector_settings()

    embedders: dict[str | None, Any] = {}

    def embedder_for(path: str | None) -> Any:
        """One SentenceEmbedder per model path, shared by the refusal and hallucination detectors."""
        if path not in embedders:
            from bruno.embedding import SentenceEmbedder

            t = time.perf_counter()
            embedders[path] = SentenceEmbedder(path)
            timings["load_embedder"] = timings.get("load_embedder", 0.0) + time.perf_counter() - t
        return embedders[path]

    t = time.perf_counter()
    neural_embedder = None
    if settings.refusal_detection_mode != "markers" and not detector_settings.neural.nli_model:
        neural_embedder = embedder_for(detector_settings.neural.embedding_model)
    detector, labels = build_detector(detector_settings, neural_embedder, device=str(model_device(model)))
    detector_info: dict[str, Any] = {"mode": settings.refusal_detection_mode}
    if labels:
        held_out = held_out_accuracy(detector, labels)
        detector_info.update(held_out_accuracy=held_out["value"], held_out=held_out,
                             labels=detector_settings.neural.labels_path)  # fmt: skip
        if isinstance(detector, HybridDetector):
            detector_info["held_out_accuracy_by_part"] = {
                "markers": held_out_accuracy(detector.markers, labels)["value"],
                detector.neural.name: held_out_accuracy(detector.neural, labels)["value"],
            }
    timings["refusal_detector"] = time.perf_counter() - t

    t = time.perf_counter()
    prompt_sets = {name: read_prompts(path) for name, path in prompt_paths.items()}
    responses = {
        name: generate_responses(model, tokenizer, prompts, system_prompt, settings, prefix)
        for name, prompts in prompt_sets.items()
    }
    rows = refusal_rows(prompt_sets, responses, detector, response_format)
    timings["refusals"] = time.perf_counter() - t

    t = time.perf_counter()
    base, reference, logprobs, batches = _kl_reference(
        write_base_logprobs,
        base_logprobs_path,
        model,
        tokenizer,
        prompt_sets["harmless"],
        system_prompt,
        settings,
        prefix,
    )
    metrics: dict[str, Any] = {"stage": stage, "model": model_path, "response_prefix": prefix}
    metrics.update(refusal_metrics(rows))
    kl_values = per_prompt_kl(base, logprobs)
    metrics["kl_divergence"] = {**mean_metric(kl_values), "position": "first response token"}
    harmless_rows = [row for row in rows if row["set"] == "harmless"]  # in prompt order, like the KL values
    for row, value in zip(harmless_rows, kl_values, strict=True):
        row["kl_divergence"] = value
    if reference is not None:
        values = teacher_forced_kl(reference, model, tokenizer, batches, settings.batch_size)
        for row, value in zip(harmless_rows, values, strict=True):
            row["kl_divergence_teacher_forced"] = value
        mass = torch.cat([lp.exp().sum(-1) for lp in reference.top_logprobs])
        metrics["kl_divergence_teacher_forced"] = {
            **mean_metric(values),
            "tokens": settings.kl_teacher_forced_tokens,
            "reference": "base model's greedy reply",
            "top_tokens": reference.top_ids[0].shape[-1],
            "reference_top_mass": float(mass.mean()),
        }
    timings["kl"] = time.perf_counter() - t

    mmlu_rows: list[dict[str, Any]] = []
    if mmlu_settings.enabled:
        t = time.perf_counter()
        questions = load_questions(mmlu_settings)
        evaluator = build_evaluator(
            mmlu_settings,
            tokenizer,
            questions,
            few_shot_examples(mmlu_settings, questions),
            system_prompt,
            prefix,
        )
        result = evaluator.evaluate(model)
        mmlu_rows = result.rows
        metrics["mmlu_accuracy"] = mmlu_metric(result, task_label(mmlu_settings, is_organism), mmlu_settings)
        timings["mmlu"] = time.perf_counter() - t

    halluc_rows: list[dict[str, Any]] = []
    if halluc_settings.enabled:
        t = time.perf_counter()
        embedder = embedder_for(halluc_settings.embedding_model)
        hallucination = HallucinationDetector(
            tokenizer, load_factual_questions(halluc_settings.source), embedder,
            halluc_settings.hallucination_n_samples, halluc_settings.temperature, halluc_settings.max_new_tokens,
            seed, system_prompt, halluc_settings.batch_size, response_format,
        )  # fmt: skip
        result = hallucination.evaluate(model)
        halluc_rows = result.rows
        metrics.update(hallucination_metrics(result, halluc_settings, embedder.name))
        timings["hallucination"] = time.perf_counter() - t

    metrics["refusal_detector"] = detector_info
    metrics["seconds"] = time.perf_counter() - start
    metrics["seconds_by_part"] = timings
    metrics.update(peak_memory())
    _write_csv(outputs["refusals"], rows)
    _write_csv(outputs["mmlu"], mmlu_rows, MMLU_COLUMNS[mmlu_settings.scoring])
    _write_csv(outputs["hallucination"], halluc_rows, HALLUCINATION_COLUMNS)
    atomic_write_json(outputs["metrics"], metrics)
    log.info(
        "%s: refusal harmful %s, harmless %s, borderline %s; KL %.4f; task accuracy %s; hallucination score %s",
        stage,
        *(_value(metrics, f"refusal_rate_{s}") for s in ("harmful", "harmless", "borderline")),
        metrics["kl_divergence"]["value"],
        _value(metrics, "mmlu_accuracy"),
        _value(metrics, "hallucination_score"),
    )
    return metrics


def _value(metrics: dict[str, Any], key: str) -> str:
    entry = metrics.get(key)
    return "-" if not entry or entry.get("value") is None else f"{entry['value']:.3f}"
