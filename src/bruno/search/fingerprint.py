"""What a stored study must match to be resumed (`bruno.search.study.create_or_check_study`)."""

from __future__ import annotations

from typing import Any

from bruno.edit.plan import AbliterationSettings
from bruno.io import sha256_bytes, sha256_texts
from bruno.search.space import SearchSettings, SearchSpace


def _tensor_hash(payload: dict[str, Any]) -> str:
    parts = [payload[k].numpy().tobytes() for k in sorted(payload) if hasattr(payload[k], "numpy")]
    return sha256_bytes(b"".join(parts))


def study_fingerprint(
    space: SearchSpace, objectives: list[str], settings: SearchSettings, abliteration: AbliterationSettings,
    payload: dict[str, Any], model_path: str, system_prompt: str | None, refusal_prompts: list[str],
    kl_prompts: list[str], refusal_markers: list[str], prefix: str,
) -> dict[str, Any]:  # fmt: skip
    """What a stored study must match to be resumed: every input that changes what a trial measures."""
    return {
        "search_space": space.describe(),
        "objectives": objectives,
        "extra_objective_settings": {
            "hallucination": [settings.hallucination_check_n_questions, settings.hallucination_n_samples]
            if "hallucination_score" in objectives
            else None,
            "capability": settings.capability_check_n_questions if "capability_loss" in objectives else None,
        },
        "directions": _tensor_hash(payload),
        "model": model_path,
        "refusal_prompts": sha256_texts(refusal_prompts),
        "kl_prompts": sha256_texts(kl_prompts),
        "system_prompt": system_prompt or "",
        "max_new_tokens": settings.max_new_tokens,
        "abliteration": {
            "components": abliteration.components,
            "norm_preservation": abliteration.norm_preservation,
            "biprojected": abliteration.biprojected,
        },  # fmt: skip
        "refusal_markers": sha256_texts(refusal_markers),
        "refusal_constraint": settings.refusal_constraint,
        **({"response_prefix": prefix} if prefix else {}),  # absent when '': older studies still resume
    }
