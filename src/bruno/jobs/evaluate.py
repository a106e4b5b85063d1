"""Stage `evaluate`: every held-out figure of one model stage -> refusals.csv, mmlu.csv, hallucination.csv, metrics.json.

The base stage also saves the KL reference of every other stage (`harmless_logprobs.pt`): its first-token log-probs on
the harmless test prompts and, when `kl_teacher_forced_tokens` > 0, its first-k greedy reply tokens with their top
log-probs. The sentence-embedding model is loaded once and shared by the neural refusal detector and the hallucination
detector.

The response prefix (`bruno.model.thinking`) is the base model's: the base stage resolves `model.response_prefix` on the base
model from the train prompts (`base_response_prefix`, as the directions job does) and records it in the KL reference;
every other stage renders its prompts with that recorded prefix, so base, ablated and healed models are measured at the
same positions and their answers judged alike.
"""

from __future__ import annotations

import csv
import filecmp
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bruno.errors import BrunoError
from bruno.evaluation.capability import MMLUSettings, few_shot_examples, load_questions
from bruno.evaluation.hallucination import HallucinationDetector, load_factual_questions
from bruno.evaluation.refusal import HybridDetector, build_detector, held_out_accuracy
from bruno.evaluation.scoring import build_evaluator
from bruno.evaluation.stage import (
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
from bruno.evaluation.stats import mean_metric
from bruno.io import atomic_path, atomic_write_json
from bruno.model.generation import encode, model_device
from bruno.model.loading import ModelSettings, load_model
from bruno.model.thinking import AUTO, ResponseFormat, base_response_prefix
from bruno.prompts import read_prompts
from bruno.runtime import peak_memory

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


# Files a stage writes into a model directory beside the model itself (the healing summary): they do not change what
# an evaluation measures.
STAGE_METADATA_FILES = frozenset({"healing.json"})


def identical_models(path: str | Path, other: str | Path) -> bool:
    """Whether two model directories hold the same files with the same bytes (weights, config, tokenizer, template),
    apart from `STAGE_METADATA_FILES`. A healing whose checkpoint selection kept step 0 merges a zero adapter and
    saves the ablated model again, byte for byte."""
    path, other = Path(path), Path(other)

    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - STAGE_METADATA_FILES

    names = files(path)
    return names == files(other) and all(
        filecmp.cmp(path / n, other / n, shallow=False) for n in sorted(names)
    )


def reuse_evaluation(
    stage: str, model_path: str, same_model_as: dict[str, str], outputs: dict[str, str | Path], start: float
) -> dict[str, Any]:
    """The evaluation of a model byte-identical to one already evaluated: its CSVs copied and its metrics relabelled.
    The evaluation is deterministic for a model, its prompts and the seed, so this is what evaluating again writes;
    `same_model_as` in metrics.json says where the figures were measured."""
    metrics = json.loads(Path(same_model_as["metrics"]).read_text(encoding="utf-8"))
    measured = {"model": same_model_as["model"], "stage": metrics["stage"], "seconds": metrics.get("seconds")}
    metrics.update(stage=stage, model=model_path, same_model_as=measured)
    for key in ("refusals", "mmlu", "hallucination"):
        with atomic_path(outputs[key]) as tmp:
            shutil.copyfile(same_model_as[key], tmp)
    metrics["seconds"] = time.perf_counter() - start
    metrics["seconds_by_part"] = {"compare_and_copy": metrics["seconds"]}
    metrics.update(peak_memory())
    atomic_write_json(outputs["metrics"], metrics)
    log.info(
        "%s: %s holds the same model as %s (byte for byte); its evaluation (%s) is copied, not repeated",
        stage, model_path, same_model_as["model"], measured["stage"],
    )  # fmt: skip
    return metrics


@dataclass
class _Evaluation:
    """One stage's evaluation in progress: the loaded model, how its prompts are rendered, the sentence-embedding
    models loaded so far (shared by the refusal and hallucination detectors) and the seconds of each part."""

    model: Any
    tokenizer: Any
    system_prompt: str | None
    prefix: str
    settings: EvaluationSettings
    timings: dict[str, float] = field(default_factory=dict)
    embedders: dict[str | None, Any] = field(default_factory=dict)

    def embedder_for(self, path: str | None) -> Any:
        if path not in self.embedders:
            from bruno.evaluation.embedding import SentenceEmbedder

            t = time.perf_counter()
            self.embedders[path] = SentenceEmbedder(path)
            self.timings["load_embedder"] = self.timings.get("load_embedder", 0.0) + time.perf_counter() - t
        return self.embedders[path]


def _response_prefix(
    model, tokenizer, model_settings: ModelSettings, write_base_logprobs: bool, base_logprobs_path: str | Path,
    train_prompt_paths: dict[str, str] | None,
) -> str:  # fmt: skip
    """The base stage resolves the response prefix from the train prompts; the others read the base stage's."""
    if not write_base_logprobs:
        return reference_prefix(base_logprobs_path, model_settings.response_prefix)
    if train_prompt_paths is None:
        raise BrunoError("the base evaluation needs the train prompts to resolve model.response_prefix")
    return base_response_prefix(
        model, tokenizer, model_settings, train_prompt_paths["harmful"], train_prompt_paths["harmless"]
    )


def _refusal_detector(ev: _Evaluation) -> tuple[Any, dict[str, Any]]:
    """The configured refusal detector and what metrics.json says about it (its held-out accuracy on labels)."""
    settings, detector_settings = ev.settings, ev.settings.detector_settings()
    neural_embedder = None
    if settings.refusal_detection_mode != "markers" and not detector_settings.neural.nli_model:
        neural_embedder = ev.embedder_for(detector_settings.neural.embedding_model)
    detector, labels = build_detector(detector_settings, neural_embedder, device=str(model_device(ev.model)))
    info: dict[str, Any] = {"mode": settings.refusal_detection_mode}
    if labels:
        held_out = held_out_accuracy(detector, labels)
        info.update(held_out_accuracy=held_out["value"], held_out=held_out,
                    labels=detector_settings.neural.labels_path)  # fmt: skip
        if isinstance(detector, HybridDetector):
            info["held_out_accuracy_by_part"] = {
                "markers": held_out_accuracy(detector.markers, labels)["value"],
                detector.neural.name: held_out_accuracy(detector.neural, labels)["value"],
            }
    return detector, info


def _kl(
    ev: _Evaluation,
    harmless: list[Any],
    rows: list[dict[str, Any]],
    base_logprobs_path: str | Path,
    write: bool,
) -> dict[str, Any]:
    """First-token and teacher-forced KL from the base model on the harmless test prompts: the metrics, and each
    prompt's values added to its row of `rows`."""
    base, reference, logprobs, batches = _kl_reference(
        write, base_logprobs_path, ev.model, ev.tokenizer, harmless, ev.system_prompt, ev.settings, ev.prefix
    )
    metrics: dict[str, Any] = {}
    kl_values = per_prompt_kl(base, logprobs)
    metrics["kl_divergence"] = {**mean_metric(kl_values), "position": "first response token"}
    harmless_rows = [row for row in rows if row["set"] == "harmless"]  # in prompt order, like the KL values
    for row, value in zip(harmless_rows, kl_values, strict=True):
        row["kl_divergence"] = value
    if reference is not None:
        values = teacher_forced_kl(reference, ev.model, ev.tokenizer, batches, ev.settings.batch_size)
        for row, value in zip(harmless_rows, values, strict=True):
            row["kl_divergence_teacher_forced"] = value
        mass = torch.cat([lp.exp().sum(-1) for lp in reference.top_logprobs])
        metrics["kl_divergence_teacher_forced"] = {
            **mean_metric(values),
            "tokens": ev.settings.kl_teacher_forced_tokens,
            "reference": "base model's greedy reply",
            "top_tokens": reference.top_ids[0].shape[-1],
            "reference_top_mass": float(mass.mean()),
        }
    return metrics


def _capability(ev: _Evaluation, is_organism: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The multiple-choice capability set: its rows and metric (none when disabled)."""
    mmlu_settings = ev.settings.mmlu_settings()
    if not mmlu_settings.enabled:
        return [], {}
    questions = load_questions(mmlu_settings)
    evaluator = build_evaluator(
        mmlu_settings, ev.tokenizer, questions, few_shot_examples(mmlu_settings, questions), ev.system_prompt,
        ev.prefix,
    )  # fmt: skip
    result = evaluator.evaluate(ev.model)
    return result.rows, {
        "mmlu_accuracy": mmlu_metric(result, task_label(mmlu_settings, is_organism), mmlu_settings)
    }


def _hallucination(
    ev: _Evaluation, response_format: ResponseFormat, seed: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Self-consistency hallucination on the factual questions: its rows and metrics (none when disabled)."""
    halluc = ev.settings.hallucination_settings()
    if not halluc.enabled:
        return [], {}
    embedder = ev.embedder_for(halluc.embedding_model)
    detector = HallucinationDetector(
        ev.tokenizer, load_factual_questions(halluc.source), embedder, halluc.hallucination_n_samples,
        halluc.temperature, halluc.max_new_tokens, seed, ev.system_prompt, halluc.batch_size, response_format,
    )  # fmt: skip
    result = detector.evaluate(ev.model)
    return result.rows, hallucination_metrics(result, halluc, embedder.name)


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
    same_model_as: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate one stage; `outputs` names the files: refusals, mmlu, hallucination (CSV) and metrics (JSON). The base
    stage (`write_base_logprobs`) resolves the response prefix from `train_prompt_paths` (harmful, harmless); the
    others read it from the base stage's reference. `same_model_as` names an evaluated model (its directory under
    "model" and its four outputs): if `model_path` holds the same model byte for byte, its evaluation is reused."""
    start = time.perf_counter()
    if same_model_as is not None and identical_models(model_path, same_model_as["model"]):
        return reuse_evaluation(stage, model_path, same_model_as, outputs, start)
    model, tokenizer = load_model(model_path, model_settings)
    system_prompt = model_settings.system_prompt
    prefix = _response_prefix(
        model, tokenizer, model_settings, write_base_logprobs, base_logprobs_path, train_prompt_paths
    )
    ev = _Evaluation(model, tokenizer, system_prompt, prefix, settings)
    response_format = ResponseFormat.of(tokenizer, system_prompt, prefix, model_settings.thinking_tags)
    timings = ev.timings

    t = time.perf_counter()
    detector, detector_info = _refusal_detector(ev)
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
    metrics: dict[str, Any] = {"stage": stage, "model": model_path, "response_prefix": prefix}
    metrics.update(refusal_metrics(rows))
    metrics.update(_kl(ev, prompt_sets["harmless"], rows, base_logprobs_path, write_base_logprobs))
    timings["kl"] = time.perf_counter() - t

    t = time.perf_counter()
    mmlu_rows, capability = _capability(ev, is_organism)
    if capability:
        metrics.update(capability)
        timings["mmlu"] = time.perf_counter() - t

    t = time.perf_counter()
    halluc_rows, hallucination = _hallucination(ev, response_format, seed)
    if hallucination:
        metrics.update(hallucination)
        timings["hallucination"] = time.perf_counter() - t

    metrics["refusal_detector"] = detector_info
    metrics["seconds"] = time.perf_counter() - start
    metrics["seconds_by_part"] = timings
    metrics.update(peak_memory())
    _write_csv(outputs["refusals"], rows)
    _write_csv(outputs["mmlu"], mmlu_rows, MMLU_COLUMNS[settings.mmlu_settings().scoring])
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
