"""Paired per-prompt comparison of the ablated and healed models' first-token KL from the base (a measurement).

For every variant with both models under results/, it computes KL(base || model) of the first response token on each
harmless test prompt, then prints the means, on how many prompts the healed model is closer to the base, the median
per-prompt KL and a seeded paired bootstrap 95 % interval of the mean change (healed - ablated).

    .venv/bin/python tools/heal_paired_kl.py --results results
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bruno.model import ModelSettings, encode, first_token_logprobs, load_model
from bruno.prompts import read_prompts
from bruno.stats import bootstrap_interval


def per_prompt_kl(path: Path, batches: list, base_logprobs: torch.Tensor) -> np.ndarray:
    model, _ = load_model(path, ModelSettings(device="cpu"))
    logprobs = first_token_logprobs(model, batches)
    return (
        torch.nn.functional.kl_div(logprobs, base_logprobs, reduction="none", log_target=True).sum(-1).numpy()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument(
        "--base", type=Path, default=None, help="base model directory (default: results/organism)"
    )
    args = parser.parse_args()
    base_path = args.base or args.results / "organism"
    base, tokenizer = load_model(base_path, ModelSettings(device="cpu"))
    texts = [p.text for p in read_prompts(args.results / "prompts" / "harmless_test.jsonl")]
    batches = encode(tokenizer, texts, None, 100, torch.device("cpu"))
    base_logprobs = first_token_logprobs(base, batches)
    for variant in sorted(p.parent.name for p in args.results.glob("*/healed")):
        ablated = per_prompt_kl(args.results / variant / "ablated", batches, base_logprobs)
        healed = per_prompt_kl(args.results / variant / "healed", batches, base_logprobs)
        lo, hi = bootstrap_interval(list(healed - ablated))
        print(
            f"{variant}: KL {ablated.mean():.4f} -> {healed.mean():.4f}, change {healed.mean() - ablated.mean():+.4f} "
            f"[{lo:+.4f}, {hi:+.4f}], lower on {(healed < ablated).sum()}/{len(texts)} prompts, "
            f"median per prompt {np.median(ablated):.4f} -> {np.median(healed):.4f}"
        )


if __name__ == "__main__":
    main()
