"""Evaluation of one model stage (base, ablated, healed) on held-out data: the settings, and the pieces the `evaluate`
job puts together.

- Refusals: greedy replies to the harmful, harmless and borderline test prompts, classified by the configured detector
  (`refusals.csv` records which detector decided each reply). A thinking model's prompts end with the response prefix
  and detectors judge the answer only (`bruno.model.thinking.ResponseFormat`; the reply is recorded whole).
- KL(base ‖ model): of the next-token distribution at the first response position (heretic's measure; after the
  response prefix), and optionally
  teacher-forced over the first k tokens of the base model's greedy reply (the base stage stores that reference once:
  reply tokens and the top log-probs per position; other stages load it).
- Capability (`bruno.evaluation.capability`) and hallucination (`bruno.evaluation.hallucination`) rows and summaries.

Every figure in metrics.json is `{"value", "n", "ci95": [lo, hi], ...}`: rates with a Wilson interval, means with a
seeded percentile-bootstrap interval over items (`bruno.evaluation.stats`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bruno.config import schema_defaults, settings_from_dict
from bruno.evaluation.capability import MMLUResult, MMLUSettings
from bruno.evaluation.hallucination import HallucinationResult, HallucinationSettings
from bruno.evaluation.refusal import DetectorSettings, MarkerDetector, NeuralDetectorSettings, RefusalDetector
from bruno.evaluation.stats import mean_metric, rate_metric
from bruno.model.generation import (
    Batch,
    decode_replies,
    encode,
    eos_token_ids,
    first_token_logprobs,
    generate_greedy,
    left_padded,
    model_device,
)
from bruno.model.thinking import DEFAULT_FORMAT, ResponseFormat
from bruno.prompts import Prompt

_default = schema_defaults("evaluation")


@dataclass(frozen=True)
class EvaluationSettings:
    """The `evaluation` config section (see config/schema.yaml for every key)."""

    max_new_tokens: int = _default("max_new_tokens")
    batch_size: int = _default("batch_size")
    refusal_markers: list[str] = _default("refusal_markers")
    refusal_detection_mode: str = _default("refusal_detection_mode")
    soft_refusal_markers: list[str] = _default("soft_refusal_markers")
    evasive_patterns: list[str] = _default("evasive_patterns")
    neural_detector: dict[str, Any] = _default("neural_detector")
    borderline: dict[str, Any] | None = _default("borderline")
    kl_teacher_forced_tokens: int = _default("kl_teacher_forced_tokens")
    kl_teacher_forced_top_tokens: int = _default("kl_teacher_forced_top_tokens")
    mmlu: dict[str, Any] = _default("mmlu")
    hallucination: dict[str, Any] = _default("hallucination")

    def detector_settings(self) -> DetectorSettings:
        return DetectorSettings(
            mode=self.refusal_detection_mode,
            markers=tuple(self.refusal_markers),
            soft_markers=tuple(self.soft_refusal_markers),
            evasive_patterns=tuple(self.evasive_patterns),
            neural=settings_from_dict(
                NeuralDetectorSettings, self.neural_detector, "evaluation.neural_detector"
            ),
        )

    def mmlu_settings(self) -> MMLUSettings:
        return settings_from_dict(MMLUSettings, self.mmlu, "evaluation.mmlu")

    def hallucination_settings(self) -> HallucinationSettings:
        return settings_from_dict(HallucinationSettings, self.hallucination, "evaluation.hallucination")


# ----------------------------------------------------------------------------------------------------------------------
# Refusals


def generate_responses(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    system_prompt: str | None,
    settings: EvaluationSettings,
    response_prefix: str = "",
) -> list[str]:
    texts = [p.text for p in prompts]
    batches = encode(
        tokenizer, texts, system_prompt, settings.batch_size, model_device(model), response_prefix
    )
    return generate_greedy(model, tokenizer, batches, settings.max_new_tokens)


def refusal_rows(
    prompt_sets: dict[str, Sequence[Prompt]],
    responses: dict[str, Sequence[str]],
    detector: RefusalDetector,
    response_format: ResponseFormat = DEFAULT_FORMAT,
) -> list[dict[str, Any]]:
    """One row per reply; both detectors judge the answer part of it (`response_format`)."""
    rows = []
    detector = response_format.judge(detector)
    # heretic's list, always recorded beside the configured detector for comparability
    markers = response_format.judge(MarkerDetector())
    for set_name, prompts in prompt_sets.items():
        verdicts = detector.classify(responses[set_name], [p.text for p in prompts])
        marker_verdicts = markers.classify(responses[set_name])
        for prompt, response, verdict, marker in zip(
            prompts, responses[set_name], verdicts, marker_verdicts, strict=True
        ):
            rows.append(
                {
                    "prompt_id": prompt.id,
                    "prompt": prompt.text,
                    "set": set_name,
                    "split": prompt.split,
                    "category": prompt.category,
                    "response": response,
                    "is_refusal": verdict.is_refusal,
                    "detector": verdict.detector,
                    "matched": verdict.matched,
                    "is_refusal_markers": marker.is_refusal,
                }
            )
    return rows


def refusal_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """refusal_rate_{set} for every prompt set, with the count of verdicts per deciding detector."""
    metrics: dict[str, Any] = {}
    for set_name in dict.fromkeys(r["set"] for r in rows):
        subset = [r for r in rows if r["set"] == set_name]
        metric = rate_metric(sum(bool(r["is_refusal"]) for r in subset), len(subset))
        deciders: dict[str, int] = {}
        for r in subset:
            if r["is_refusal"]:
                deciders[r["detector"]] = deciders.get(r["detector"], 0) + 1
        metric["refusals_by_detector"] = deciders
        metrics[f"refusal_rate_{set_name}"] = metric
        if "is_refusal_markers" in subset[0]:
            marker_count = sum(bool(r["is_refusal_markers"]) for r in subset)
            metrics[f"refusal_rate_{set_name}_markers"] = rate_metric(marker_count, len(subset))
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# KL


def per_prompt_kl(base_logprobs: torch.Tensor, logprobs: torch.Tensor) -> list[float]:
    """KL(base ‖ model) per prompt, summed over the vocabulary."""
    p = base_logprobs.exp()
    return (p * (base_logprobs - logprobs)).sum(-1).tolist()


def harmless_logprobs(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    system_prompt: str | None,
    batch_size: int,
    response_prefix: str = "",
) -> torch.Tensor:
    texts = [p.text for p in prompts]
    return first_token_logprobs(
        model, encode(tokenizer, texts, system_prompt, batch_size, model_device(model), response_prefix)
    )


def _prompt_tokens(batches: Sequence[Batch]) -> list[list[int]]:
    """The unpadded token ids of every prompt in left-padded batches."""
    tokens = []
    for batch in batches:
        for ids, mask in zip(batch.input_ids.cpu(), batch.attention_mask.cpu(), strict=True):
            tokens.append(ids[mask.bool()].tolist())
    return tokens


@torch.inference_mode()
def teacher_forced_logprobs(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    replies: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int,
) -> Iterator[torch.Tensor]:
    """Per prompt, in order, the [len(reply), vocab] float32 log-softmax of the raw logits at the positions that predict
    each reply token (the first is the first response position), the reply fed in (teacher forcing). Tensors stay on
    the model's device and are yielded batch by batch, so only one batch of full-vocabulary rows is alive at a time."""
    device = model_device(model)
    for start in range(0, len(prompts), batch_size):
        chunk = zip(prompts[start : start + batch_size], replies[start : start + batch_size], strict=True)
        seqs = [list(p) + list(r) for p, r in chunk]
        lengths = [len(r) for r in replies[start : start + batch_size]]
        batch = left_padded(seqs, pad_id, device)
        keep = max(lengths) + 1
        logits = model(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids,
            use_cache=False,
            logits_to_keep=keep,
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, length in enumerate(lengths):
            # logits_to_keep keeps the last `keep` positions; position keep-1 predicts the token after the reply.
            yield logprobs[row, keep - 1 - length : keep - 1]


@dataclass
class TeacherForcedReference:
    """The base model's first-k greedy reply tokens per harmless test prompt and its top log-probs per position."""

    prompt_ids: list[str]
    replies: list[list[int]]
    top_ids: list[torch.Tensor]  # [len(reply), m] int32
    top_logprobs: list[torch.Tensor]  # [len(reply), m] float32

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_ids": self.prompt_ids, "replies": self.replies, "top_ids": self.top_ids,
                "top_logprobs": self.top_logprobs}  # fmt: skip


def build_teacher_forced_reference(
    model: nn.Module,
    tokenizer: Any,
    batches: Sequence[Batch],
    prompt_ids: list[str],
    k: int,
    top: int,
    batch_size: int,
) -> TeacherForcedReference:
    prompts = _prompt_tokens(batches)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = eos_token_ids(model, tokenizer)
    replies: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        replies += decode_replies(model, prompts[start : start + batch_size], pad, eos, k)
    replies = [r if r else [eos[0]] for r in replies]
    top_ids, top_logprobs = [], []
    for lp in teacher_forced_logprobs(model, prompts, replies, pad, batch_size):
        values, indices = lp.topk(min(top, lp.shape[-1]), dim=-1)
        top_ids.append(indices.to(torch.int32).cpu())  # int32 halves the saved reference
        top_logprobs.append(values.cpu())
    return TeacherForcedReference(prompt_ids, replies, top_ids, top_logprobs)


def teacher_forced_kl(
    reference: TeacherForcedReference,
    model: nn.Module,
    tokenizer: Any,
    batches: Sequence[Batch],
    batch_size: int,
) -> list[float]:
    """Per prompt, the mean over the reply positions of KL(base ‖ model) on the base's greedy reply.

    The base distribution is kept as its top-m tokens plus one bucket for the rest: exact when m covers the vocabulary,
    otherwise the KL of the coarsened distributions (a lower bound, tight when the top-m hold nearly all the mass)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    logprobs = teacher_forced_logprobs(model, _prompt_tokens(batches), reference.replies, pad, batch_size)
    values = []
    for lp, ids, base in zip(logprobs, reference.top_ids, reference.top_logprobs, strict=True):
        model_top = lp.gather(-1, ids.to(device=lp.device, dtype=torch.long)).cpu()
        p_base = base.exp()
        kl = (p_base * (base - model_top)).sum(-1)
        # The whole vocabulary: no rest bucket (1 - sum p would be float32 rounding).
        if ids.shape[-1] >= lp.shape[-1]:
            values.append(float(kl.mean()))
            continue
        tail_base = (1 - p_base.sum(-1)).clamp(min=0)
        tail_model = (1 - model_top.exp().sum(-1)).clamp(min=1e-12)
        tail = torch.where(
            tail_base > 1e-9, tail_base * (tail_base.clamp(min=1e-12).log() - tail_model.log()), 0.0
        )
        values.append(float((kl + tail).mean()))
    return values


# ----------------------------------------------------------------------------------------------------------------------
# Summaries


def mmlu_metric(result: MMLUResult, task: str, settings: MMLUSettings) -> dict[str, Any]:
    metric = rate_metric(result.n_correct, result.n)
    by_subject: dict[str, list[bool]] = {}
    for row in result.rows:
        by_subject.setdefault(row["subject"], []).append(bool(row["correct"]))
    if result.scoring == "cloze":
        from bruno.evaluation.cloze import SCORING

        scoring = SCORING
        unnormalised = sum(r["predicted_unnormalised"] == r["gold"] for r in result.rows)
        extra: dict[str, Any] = {"accuracy_unnormalised": rate_metric(unnormalised, result.n)}
    else:
        scoring = "log-likelihood of the answer letters A-D"
        extra = {
            "mean_letter_mass": sum(r["letter_mass"] for r in result.rows) / result.n if result.n else None
        }
    metric.update(
        task=task,
        scoring=scoring,
        few_shot=settings.mmlu_few_shot,
        chat_template=settings.use_chat_template,
        **extra,
        by_subject={s: rate_metric(sum(v), len(v)) for s, v in sorted(by_subject.items())},
    )
    return metric


def hallucination_metrics(
    result: HallucinationResult, settings: HallucinationSettings, embedder: str
) -> dict[str, Any]:
    rows = result.rows
    groups = list(dict.fromkeys(r["group"] for r in rows))
    score = mean_metric([r["score"] for r in rows])
    score.update(
        n_samples=settings.hallucination_n_samples,
        temperature=settings.temperature,
        embedding_model=embedder,
        groups={g: mean_metric([r["score"] for r in rows if r["group"] == g]) for g in groups},
    )
    gold = [r for r in rows if r["correct"] is not None]
    rate = rate_metric(sum(not r["correct"] for r in gold), len(gold))
    rate.update(
        answer_match="normalised containment of a gold answer in the greedy answer",
        groups={
            g: rate_metric(
                sum(not r["correct"] for r in gold if r["group"] == g), sum(r["group"] == g for r in gold)
            )
            for g in groups
        },
    )
    return {"hallucination_score": score, "hallucination_rate": rate}
