"""Editing the routed experts of a mixture-of-experts layer, stored as one fused 3-D parameter.

transformers 5 keeps every expert's down projection in one `nn.Parameter` of the experts module: [E, out, in]
(Qwen-MoE, Mixtral) or [E, in, out] (GPT-OSS, `transposed`). Each expert e is edited as its own matrix W_e (PyTorch
layout [out, in]) with `bruno.edit.ablation.make_edit`, so norm preservation is per expert; the router is untouched, and
a shared expert (a plain Linear) gets the ordinary edit.

A forward hook on the experts module's output cannot reproduce a per-expert edit (the row and column rescaling of
norm preservation act inside each expert, before the routing weights sum them). During a trial the experts module
therefore runs its own per-expert (eager) forward with the fused parameter replaced by a stand-in whose `[e]` is
W'_e, computed on the fly exactly as `bake` writes it: the trial sees the baked weights, one expert matrix at a time,
with no copy of the experts. `bake` edits the parameter in place, one expert at a time (a float32 copy of one expert,
never of all of them).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bruno.edit.ablation import LowRankEdit, apply_edit, hook_handles, make_edit, weight_stats


@dataclass
class ExpertsEdit:
    experts: list[LowRankEdit]  # one per expert
    shared: LowRankEdit | None = None


class _EditedExperts:
    """Stands in for the fused parameter during a trial: `[e]` is expert e's edited matrix in the stored layout."""

    def __init__(self, target: ExpertsTarget, edits: Sequence[LowRankEdit]):
        self.target, self.edits = target, edits

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self.target.edited(int(index), self.edits[int(index)])


class ExpertsTarget:
    """The routed experts' fused down projections of one layer (and its shared expert's, if any)."""

    def __init__(self, module: nn.Module, parameter: str, transposed: bool, shared: nn.Linear | None = None):
        self.module, self.parameter, self.transposed, self.shared = module, parameter, transposed, shared
        self.weight: torch.Tensor = getattr(module, parameter)
        if self.weight.dim() != 3:
            raise ValueError(f"{type(module).__name__}.{parameter} is not a fused 3-D expert parameter")

    @property
    def n_experts(self) -> int:
        return self.weight.shape[0]

    def matrix(self, expert: int) -> torch.Tensor:
        """Expert e's down projection as a [out, in] view of the fused parameter."""
        return self.weight[expert].T if self.transposed else self.weight[expert]

    def edited(self, expert: int, edit: LowRankEdit) -> torch.Tensor:
        """Expert e's edited matrix in the stored layout and dtype (what `bake` writes)."""
        matrix = apply_edit(self.matrix(expert), edit).to(self.weight.dtype)
        return matrix.T.contiguous() if self.transposed else matrix

    def weight_stats(self) -> dict[str, Any]:
        return {
            "experts": [weight_stats(self.matrix(e)) for e in range(self.n_experts)],
            "shared": weight_stats(self.shared.weight) if self.shared is not None else None,
        }

    def make_edit(
        self,
        directions: Sequence[torch.Tensor],
        weights: Sequence[float],
        norm_preservation: str,
        stats: dict[str, Any],
    ) -> ExpertsEdit:
        experts = [
            make_edit(self.matrix(e), directions, weights, norm_preservation, stats["experts"][e])
            for e in range(self.n_experts)
        ]
        shared = None
        if self.shared is not None:
            shared = make_edit(self.shared.weight, directions, weights, norm_preservation, stats["shared"])
        return ExpertsEdit(experts, shared)

    @contextlib.contextmanager
    def applied(self, edit: ExpertsEdit) -> Iterator[None]:
        """Run the layer with the edit for the duration of the block; everything is restored afterwards."""
        # The family's own per-expert loop (`use_experts_implementation` wraps it; grouped kernels read all experts).
        forward = type(self.module).forward
        eager = getattr(forward, "__wrapped__", forward)
        parameters = self.module._parameters
        original = parameters[self.parameter]
        with contextlib.ExitStack() as stack:
            if self.shared is not None and edit.shared is not None:
                for handle in hook_handles(self.shared, edit.shared):
                    stack.callback(handle.remove)
            parameters[self.parameter] = _EditedExperts(self, edit.experts)  # type: ignore[assignment]
            self.module.forward = types.MethodType(eager, self.module)
            try:
                yield
            finally:
                parameters[self.parameter] = original
                del self.module.forward

    @torch.no_grad()
    def bake(self, edit: ExpertsEdit) -> None:
        """Write the edit into the weights, in place, one expert at a time."""
        for expert, expert_edit in enumerate(edit.experts):
            self.weight[expert].copy_(self.edited(expert, expert_edit))
        if self.shared is not None and edit.shared is not None:
            self.shared.weight.copy_(apply_edit(self.shared.weight, edit.shared).to(self.shared.weight.dtype))

    def parameter_names(self, names: dict[int, str]) -> list[str]:
        """Dotted names of the edited parameters, given {id(module): name} of the model."""
        found = [f"{names[id(self.module)]}.{self.parameter}"]
        if self.shared is not None:
            found.append(f"{names[id(self.shared)]}.weight")
        return found
