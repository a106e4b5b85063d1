"""Scoring one set of abliteration parameters on the validation prompts, without copying or reloading the model.

Everything that does not depend on the parameters is computed once: tokenised prompt batches (each prompt ending with
the response prefix, `bruno.thinking`), the base model's first-token log-probs on the harmless prompts, the norms of
the target matrices, and the base model's leading layers on both prompt sets (`PrefixReuse`: layers before a trial's
first edited layer are not recomputed). Extra objectives (hallucination score, capability loss) are callables of the
hooked model, timed separately.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bruno.ablation import hooked
from bruno.model import encode, first_token_logprobs, generate_greedy, kl_divergence, model_device
from bruno.plan import AblationParams, DirectionSet, EditTargets, build_edits
from bruno.prefix import PrefixReuse
from bruno.refusal import MarkerDetector
from bruno.thinking import DEFAULT_THINKING_TAGS, AnswerOnly, prompt_opened


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


class TrialEvaluator:
    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        directions: DirectionSet | torch.Tensor,
        components: list[str],
        norm_preservation: str,
        refusal_prompts: Sequence[str],
        kl_prompts: Sequence[str],
        system_prompt: str | None,
        batch_size: int,
        max_new_tokens: int,
        detector: MarkerDetector | None = None,
        biprojected: bool = False,
        refusal_early_stop: bool = False,
        extra_objectives: Mapping[str, Callable[[nn.Module], float]] | None = None,
        prefix_reuse_mb: float = 1024,
        response_prefix: str = "",
        thinking_tags: Sequence[Sequence[str]] = DEFAULT_THINKING_TAGS,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.directions = directions if isinstance(directions, DirectionSet) else DirectionSet(directions)
        self.biprojected = biprojected
        self.extra_objectives = dict(extra_objectives or {})
        # A marker verdict never changes once a marker has appeared, so stopping such a sequence early gives the
        # same refusal count with fewer decoding steps.
        self.stop = (
            (lambda texts: [bool(self.detector.first_match(t)) for t in texts])
            if refusal_early_stop
            else None
        )
        self.norm_preservation = norm_preservation
        self.max_new_tokens = max_new_tokens
        # Refusals are judged on the answer, not on a thinking block (bruno.thinking).
        opened = prompt_opened(tokenizer, system_prompt, response_prefix, thinking_tags)
        self.detector = AnswerOnly(detector or MarkerDetector(), thinking_tags, opened)
        self.targets = EditTargets(model, components)
        self._encoding = (system_prompt, batch_size, response_prefix)
        self._prefix_reuse_mb = prefix_reuse_mb
        self.refusal_batches = self._encode(refusal_prompts)
        self.kl_batches = self._encode(kl_prompts)
        self.n_refusal_prompts = len(refusal_prompts)
        self.base_logprobs = first_token_logprobs(model, self.kl_batches)
        # The base model's leading layers on these prompts, re-used by trials whose edits start later.
        self.prefix = PrefixReuse(model, self.refusal_batches, self.kl_batches, prefix_reuse_mb)
        # The unedited model's values of the extra objectives: the reference for selection constraints.
        self.base_extra = {name: float(objective(model)) for name, objective in self.extra_objectives.items()}

    def _encode(self, prompts: Sequence[str]) -> list[Any]:
        system_prompt, batch_size, response_prefix = self._encoding
        return encode(
            self.tokenizer, prompts, system_prompt, batch_size, model_device(self.model), response_prefix
        )

    @property
    def n_layers(self) -> int:
        return self.targets.n_layers

    def rescoring(self, refusal_prompts: Sequence[str], max_new_tokens: int) -> TrialEvaluator:
        """An evaluator on the same model, directions, KL prompts and detector that counts refusals on other prompts
        with another token budget and no extra objectives (`bruno.confirm`). This evaluator's prefix cache is
        released for the other's (its trials still score, without re-use)."""
        other = copy.copy(self)
        other.refusal_batches = self._encode(refusal_prompts)
        other.n_refusal_prompts = len(refusal_prompts)
        other.max_new_tokens = max_new_tokens
        other.extra_objectives = {}
        self.prefix = PrefixReuse(self.model, [], [], 0)
        other.prefix = PrefixReuse(self.model, other.refusal_batches, self.kl_batches, self._prefix_reuse_mb)
        return other

    def evaluate(self, params: AblationParams) -> TrialResult:
        start = time.perf_counter()
        edits = build_edits(self.targets, self.directions, params, self.norm_preservation, self.biprojected)
        first_edited = min((layer for _, layer in edits), default=self.n_layers)
        with hooked(self.targets.modules, edits), self.prefix.replaying(first_edited):
            t0 = time.perf_counter()
            logprobs = first_token_logprobs(self.model, self.kl_batches)
            t1 = time.perf_counter()
            responses = generate_greedy(
                self.model, self.tokenizer, self.refusal_batches, self.max_new_tokens, self.stop
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
