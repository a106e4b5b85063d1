"""The matrices an edit targets: each decoder layer's writers to the residual stream for the configured components
(attention output, MLP down projection), found through the model's family (`bruno.model.families`); in a
mixture-of-experts layer the fused experts (`bruno.edit.experts`)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bruno.edit.experts import ExpertsTarget
from bruno.errors import BrunoError
from bruno.model.families import COMPONENTS, Family, decoder_layers, family_of, submodule


def _linear(layer: nn.Module, path: str, index: int, family: Family) -> nn.Linear:
    module = submodule(layer, path)
    if not isinstance(module, nn.Linear):
        raise BrunoError(f"Layer {index} of this {family.name} model has no Linear '{path}'.")
    return module


def _mlp_writer(layer: nn.Module, index: int, family: Family) -> nn.Linear | ExpertsTarget:
    spec = family.experts
    experts = submodule(layer, spec.module) if spec is not None else None
    if spec is None or experts is None:  # a dense family, or a dense layer of a MoE family (mlp_only_layers)
        return _linear(layer, family.mlp_out, index, family)
    shared = _linear(layer, family.shared_expert_out, index, family) if family.shared_expert_out else None
    return ExpertsTarget(experts, spec.parameter, spec.transposed, shared)


def residual_writers(
    model: nn.Module, components: Sequence[str]
) -> dict[str, list[nn.Linear | ExpertsTarget]]:
    """For each component, what every decoder layer writes it into the residual stream with."""
    family = family_of(model)
    layers = decoder_layers(model)
    found: dict[str, list[nn.Linear | ExpertsTarget]] = {}
    for component in components:
        if component == "attn.o_proj":
            found[component] = [
                _linear(layer, family.attention_out, i, family) for i, layer in enumerate(layers)
            ]
        elif component == "mlp.down_proj":
            found[component] = [_mlp_writer(layer, i, family) for i, layer in enumerate(layers)]
        else:
            raise BrunoError(f"Unknown component '{component}'; known: {', '.join(COMPONENTS)}.")
    return found
