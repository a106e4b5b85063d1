"""Scoring one set of abliteration parameters on the validation prompts, without copying or reloading the model.

Everything that does not depend on the parameters is computed once: tokenised prompt batches (each prompt ending with
the response prefix, `bruno.model.thinking`), the base model's first-token log-probs on the harmless prompts, the norms of
the target matrices, and the base model's leading layers on both prompt sets (`PrefixReuse`: layers before a trial's
first edited layer are not recomputed). Extra objectives (hallucination score, capability loss) are callables of the
hooked model, timed separately.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bruno.edit.ablation import hooked
from bruno.edit.plan import AblationParams, AbliterationSettings, DirectionSet, EditTargets, build_edits
from bruno.evaluation.refusal import MarkerDetector
from bruno.model.generation import encode, first_token_logprobs, generate_greedy, kl_divergence, model_device
from bruno.model.prefix import PrefixReuse
from bruno.model.thinking import DEFAULT_THINKING_TAGS, AnswerOnly, prompt_opened


@dataclass(frozen=True)
class TrialResult:
    kl_divergence: float
    refusal_rate: float
    n_refusals: int
    n_prompts: int
    seconds: float
    seconds_kl: float
    seconds_generation: float
    responses: tuple[str, ...]
    extra: dict[str, float] = field(default_factory=dict)
    extra_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialPrompts:
    """What a trial is scored on and how the prompts are rendered: refusals are counted in the greedy replies to the
    `refusal` prompts (harmful, val), the KL is measured on the first response token of the `kl` prompts (harmless,
    val); every prompt ends with the response prefix (`bruno.model.thinking`)."""

    refusal: Sequence[str]
    kl: Sequence[str]
    system_prompt: str | None = None
    response_prefix: str = ""
    thinking_tags: Sequence[Sequence[str]] = DEFAULT_THINKING_TAGS


@dataclass(frozen=True)
class Decoding:
    """How a trial generates: prompts per batch, greedy tokens per refusal prompt, whether a reply stops at its first
    refusal marker, and the memory for re-used leading layers (`bruno.model.prefix`, 0 = off)."""

    batch_size: int
    max_new_tokens: int
    refusal_early_stop: bool = False
    prefix_reuse_mb: float = 1024


class TrialEvaluator:
    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        directions: DirectionSet | torch.Tensor,
        edit: AbliterationSettings,
        prompts: TrialPrompts,
        decoding: Decoding,
        detector: MarkerDetector | None = None,
        extra_objectives: Mapping[str, Callable[[nn.Module], float]] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.directions = directions if isinstance(directions, DirectionSet) else DirectionSet(directions)
        self.edit, self.prompts, self.decoding = edit, prompts, decoding
        self.extra_objectives = dict(extra_objectives or {})
        # A marker verdict never changes once a marker has appeared, so stopping such a sequence early gives the
        # same refusal count with fewer decoding steps.
        self.stop = (
            (lambda texts: [bool(self.detector.first_match(t)) for t in texts])
            if decoding.refusal_early_stop
            else None
        )
        # Refusals are judged on the answer, not on a thinking block (bruno.model.thinking).
        opened = prompt_opened(
            tokenizer, prompts.system_prompt, prompts.response_prefix, prompts.thinking_tags
        )
        self.detector = AnswerOnly(detector or MarkerDetector(), prompts.thinking_tags, opened)
        self.targets = EditTargets(model, edit.components)
        self.refusal_batches = self._encode(prompts.refusal)
        self.kl_batches = self._encode(prompts.kl)
        self.base_logprobs = first_token_logprobs(model, self.kl_batches)
        # The base model's leading layers on these prompts, re-used by trials whose edits start later.
        self.prefix = PrefixReuse(model, self.refusal_batches, self.kl_batches, decoding.prefix_reuse_mb)
        # The unedited model's values of the extra objectives: the reference for selection constraints.
        self.base_extra = {name: float(objective(model)) for name, objective in self.extra_objectives.items()}

    def _encode(self, prompts: Sequence[str]) -> list[Any]:
        return encode(
            self.tokenizer, prompts, self.prompts.system_prompt, self.decoding.batch_size, model_device(self.model),
            self.prompts.response_prefix,
        )  # fmt: skip

    @property
    def n_layers(self) -> int:
        return self.targets.n_layers

    @property
    def n_refusal_prompts(self) -> int:
        return len(self.prompts.refusal)

    def rescoring(self, refusal_prompts: Sequence[str], max_new_tokens: int) -> TrialEvaluator:
        """An evaluator on the same model, directions, KL prompts and detector that counts refusals on other prompts
        with another token budget and no extra objectives (`bruno.search.confirm`). This evaluator's prefix cache is
        released for the other's (its trials still score, without re-use)."""
        other = copy.copy(self)
        other.prompts = dataclasses.replace(self.prompts, refusal=list(refusal_prompts))
        other.decoding = dataclasses.replace(self.decoding, max_new_tokens=max_new_tokens)
        other.refusal_batches = other._encode(other.prompts.refusal)
        other.extra_objectives = {}
        self.prefix = PrefixReuse(self.model, [], [], 0)
        other.prefix = PrefixReuse(
            self.model, other.refusal_batches, self.kl_batches, self.decoding.prefix_reuse_mb
        )
        return other

    def evaluate(self, params: AblationParams) -> TrialResult:
        start = time.perf_counter()
        edits = build_edits(
            self.targets, self.directions, params, self.edit.norm_preservation, self.edit.biprojected
        )
        first_edited = min((layer for _, layer in edits), default=self.n_layers)
        with hooked(self.targets.modules, edits), self.prefix.replaying(first_edited):
            t0 = time.perf_counter()
            logprobs = first_token_logprobs(self.model, self.kl_batches)
            t1 = time.perf_counter()
            responses = generate_greedy(
                self.model, self.tokenizer, self.refusal_batches, self.decoding.max_new_tokens, self.stop
            )
            t2 = time.perf_counter()
            extra, extra_seconds = {}, {}
            for name, objective in self.extra_objectives.items():
                t = time.perf_counter()
                extra[name] = float(objective(self.model))
                extra_seconds[name] = time.perf_counter() - t
        kl = kl_divergence(self.base_logprobs, logprobs)
        verdicts = self.detector.classify(responses)
        n_refusals = sum(v.is_refusal for v in verdicts)
        return TrialResult(
            kl_divergence=kl if math.isfinite(kl) else float("nan"),
            refusal_rate=n_refusals / self.n_refusal_prompts,
            n_refusals=n_refusals,
            n_prompts=self.n_refusal_prompts,
            seconds=time.perf_counter() - start,
            seconds_kl=t1 - t0,
            seconds_generation=t2 - t1,
            responses=tuple(responses),
            extra=extra,
            extra_seconds=extra_seconds,
        )
