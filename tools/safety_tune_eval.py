"""Safety-tuning measurement (prints figures, asserts nothing): optionally runs the `safety_tune` stage on a base
model with config overrides, then measures a model on the TEST splits the way the pipeline evaluates: greedy replies
through its chat template (no system message, so SmolLM2's own is inserted), heretic's refusal markers; cloze
capability on the general-knowledge set through the chat template; first-token KL(base || model) on the harmless test
prompts. Rates carry n and Wilson 95 % intervals.

    PYTHONPATH=src .venv/bin/python tools/safety_tune_eval.py --base /tmp/smollm2-dequant --out /tmp/safety-a \\
        --train --set learning_rate=5e-4 epochs=3
    PYTHONPATH=src .venv/bin/python tools/safety_tune_eval.py --base /tmp/smollm2-dequant   # the untuned model

Recorded in docs/safety-tuning.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import yaml

from bruno.evaluation.capability import MMLUSettings, load_questions
from bruno.evaluation.refusal import MarkerDetector
from bruno.evaluation.scoring import build_evaluator
from bruno.evaluation.stats import wilson_interval
from bruno.io import atomic_directory, atomic_write_json, read_jsonl
from bruno.model.generation import encode, first_token_logprobs, generate_greedy, kl_divergence
from bruno.model.loading import ModelSettings, load_model
from bruno.prompts import Prompt
from bruno.safety import SafetyTuningSettings, safety_tune

REPO = Path(__file__).resolve().parents[1]


def prompts(set_name: str, split: str) -> list[Prompt]:
    return [
        Prompt(r["id"], r["text"], r.get("category", ""), r["split"])
        for r in read_jsonl(REPO / "data" / "prompts" / f"{set_name}.jsonl")
        if r["split"] == split
    ]


def rate(k: int, n: int) -> str:
    low, high = wilson_interval(k, n)
    return f"{k}/{n} = {k / n:.1%} [{low:.1%}, {high:.1%}]"


def measure(model_dir: Path, base_dir: Path, max_new_tokens: int, skip_capability: bool) -> dict:
    model, tokenizer = load_model(model_dir, ModelSettings(name=str(model_dir), device="cpu"))
    detector, figures = MarkerDetector(), {"model": str(model_dir), "max_new_tokens": max_new_tokens}
    for set_name in ("harmful", "harmless"):
        start = time.perf_counter()
        test = prompts(set_name, "test")
        batches = encode(tokenizer, [p.text for p in test], None, 32, torch.device("cpu"))
        replies = generate_greedy(model, tokenizer, batches, max_new_tokens)
        refused = [v.is_refusal for v in detector.classify(replies)]
        figures[set_name] = {
            "refused": sum(refused),
            "n": len(test),
            "seconds": round(time.perf_counter() - start),
        }
        figures[f"{set_name}_examples"] = [
            (p.text, r) for p, r, x in zip(test, replies, refused, strict=True)
        ][:3]
        figures[f"{set_name}_refused_examples"] = [
            (p.text, r) for p, r, x in zip(test, replies, refused, strict=True) if x
        ][:12]
        print(
            f"{set_name} test refusal: {rate(sum(refused), len(test))} ({figures[set_name]['seconds']} s)",
            flush=True,
        )
    if base_dir.resolve() != model_dir.resolve():
        base, _ = load_model(base_dir, ModelSettings(name=str(base_dir), device="cpu"))
        batches = encode(
            tokenizer, [p.text for p in prompts("harmless", "test")], None, 32, torch.device("cpu")
        )
        figures["first_token_kl"] = kl_divergence(
            first_token_logprobs(base, batches), first_token_logprobs(model, batches)
        )
        print(f"first-token KL(base || model), harmless test: {figures['first_token_kl']:.3f}", flush=True)
        del base
    if not skip_capability:
        start = time.perf_counter()
        settings = MMLUSettings(
            source={"path": str(REPO / "data" / "eval" / "general_knowledge_mc.jsonl"), "record_split": "test"},
            few_shot_split="train", mmlu_categories=None, mmlu_samples_per_category=None, mmlu_few_shot=0,
            use_chat_template=True, scoring="cloze",
        )  # fmt: skip
        result = build_evaluator(settings, tokenizer, load_questions(settings)).evaluate(model)
        figures["capability"] = {"correct": result.n_correct, "n": result.n}
        print(f"capability (cloze, chat, test): {rate(result.n_correct, result.n)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True, help="the untuned model directory")
    parser.add_argument(
        "--out", type=Path, help="the tuned model directory (written with --train, else read)"
    )
    parser.add_argument("--train", action="store_true", help="run the safety_tune stage into --out first")
    parser.add_argument(
        "--set", nargs="*", default=[], help="safety_tuning settings overrides, key=value (YAML)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--skip-capability", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = args.out or args.base
    if args.train:
        overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        settings = SafetyTuningSettings(**{"enabled": True, **overrides})
        train = {p: prompts(p, "train") for p in ("harmful", "harmless")}
        with atomic_directory(args.out) as tmp:
            summary = safety_tune(
                args.base,
                tmp,
                train["harmful"],
                train["harmless"],
                settings,
                args.seed,
                args.threads,
                log=functools.partial(print, flush=True),
            )
            atomic_write_json(Path(tmp) / "training_summary.json", summary)
        print(f"trained: {summary['steps']} steps, seconds {summary['seconds']}, set {summary['train_set']}")
    figures = measure(model_dir, args.base, args.max_new_tokens, args.skip_capability)
    if args.out:
        atomic_write_json(args.out.parent / f"{args.out.name}-eval.json", figures)
    print(json.dumps({k: v for k, v in figures.items() if k.endswith("examples")}, indent=1)[:6000])


if __name__ == "__main__":
    main()
