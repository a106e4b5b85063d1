"""Supported model families: where each keeps its decoder layers and which matrices write into the residual stream.

One table (`FAMILIES`, keyed by the config's `model_type`) is the only place that knows module names. Per decoder
layer, the component `attn.o_proj` is the attention output projection and `mlp.down_proj` is whatever writes the
MLP's output: a dense down projection, or, in a mixture-of-experts layer, every routed expert's down projection (one
fused 3-D parameter, `bruno.edit.experts`) plus the shared expert's down projection where the family has one. Routers are
never edited. A model of any other type stops with an error that lists the supported families, before anything is
computed (`check_model_dir` reads only `config.json`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from bruno.errors import BrunoError

COMPONENTS = ("attn.o_proj", "mlp.down_proj")


@dataclass(frozen=True)
class FusedExperts:
    """Where a mixture-of-experts layer keeps its routed experts' down projections."""

    module: str = "mlp.experts"
    parameter: str = "down_proj"
    # False: [experts, out = hidden, in] (PyTorch's per-expert layout); True: [experts, in, out = hidden] (GPT-OSS).
    transposed: bool = False


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str  # the transformers config class a tiny test instance is built from
    layers: str = "model.layers"
    attention_out: str = "self_attn.o_proj"
    mlp_out: str = "mlp.down_proj"  # dense MLP layers (all of a dense family, mlp_only_layers of a MoE)
    experts: FusedExperts | None = None
    shared_expert_out: str | None = None
    test: str = ""  # the test that proves the family (tests/test_families.py)

    def describe_mlp(self) -> str:
        if self.experts is None:
            return self.mlp_out
        layout = "[E, in, out]" if self.experts.transposed else "[E, out, in]"
        shared = f" + {self.shared_expert_out}" if self.shared_expert_out else ""
        return f"every expert of {self.experts.module}.{self.experts.parameter} {layout}{shared}"


_DENSE_TEST = "test_family_trial_bake_save_reload_generate"
_MOE_TEST = "test_moe_edit_reaches_every_expert"
FAMILIES: dict[str, Family] = {
    "llama": Family("Llama", "LlamaConfig", test=_DENSE_TEST),
    "mistral": Family("Mistral", "MistralConfig", test=_DENSE_TEST),
    "qwen2": Family("Qwen2", "Qwen2Config", test=_DENSE_TEST),
    "qwen3": Family("Qwen3", "Qwen3Config", test=_DENSE_TEST),
    "gemma2": Family("Gemma 2", "Gemma2Config", test=_DENSE_TEST),
    "gemma3_text": Family("Gemma 3 (text)", "Gemma3TextConfig", test=_DENSE_TEST),
    "phi3": Family("Phi-3", "Phi3Config", test=_DENSE_TEST),
    "qwen3_moe": Family("Qwen3-MoE", "Qwen3MoeConfig", experts=FusedExperts(), test=_MOE_TEST),
    "mixtral": Family("Mixtral", "MixtralConfig", experts=FusedExperts(), test=_MOE_TEST),
    "gpt_oss": Family("GPT-OSS", "GptOssConfig", experts=FusedExperts(transposed=True), test=_MOE_TEST),
    "qwen2_moe": Family(
        "Qwen2-MoE",
        "Qwen2MoeConfig",
        experts=FusedExperts(),
        shared_expert_out="mlp.shared_expert.down_proj",
        test=_MOE_TEST,
    ),
}


def supported_families() -> str:
    return ", ".join(f"{f.name} ({t})" for t, f in FAMILIES.items())


def family_for_type(model_type: str | None, where: str) -> Family:
    family = FAMILIES.get(model_type or "")
    if family is None:
        raise BrunoError(
            f"{where}: model type '{model_type}' is not a supported model family. Supported (config model_type in "
            f"brackets): {supported_families()}. Adding one is a row in bruno.model.families.FAMILIES and a test in "
            "tests/test_families.py."
        )
    return family


def family_of(model: nn.Module) -> Family:
    config = getattr(model, "config", None)
    return family_for_type(getattr(config, "model_type", None), f"model {type(model).__name__}")


def check_model_dir(path: str | Path) -> Family:
    """The family of a local model directory, from its config.json alone (no weights are read)."""
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise BrunoError(f"{config_path} not found: model.name must be a local model directory.")
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    return family_for_type(model_type, str(config_path))


def submodule(module: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    family = family_of(model)
    layers = submodule(model, family.layers)
    if not isinstance(layers, nn.ModuleList):
        raise BrunoError(
            f"{type(model).__name__} ({family.name}) has no decoder layer list at '{family.layers}'."
        )
    return layers
