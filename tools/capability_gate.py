"""Capability gate on a real model (a measurement, not a test): accuracy on the general-knowledge multiple-choice set
with letter and cloze scoring, through the chat template and as raw text, with n and Wilson 95 % intervals.

Gate (issue 19): the lower end of the chosen scoring's interval on the test split is at least chance + 10 points
(35 % for four choices). The script prints the figures and whether each setting passes; it asserts nothing.

    PYTHONPATH=src .venv/bin/python tools/capability_gate.py --model /tmp/smollm2-dequant

`--model` is any model directory `bruno.model.loading.load_model` reads (safetensors + tokenizer); docs/real-model-capability.md
says how the dequantised SmolLM2-135M-Instruct directory was made. No system prompt is given, so a chat template that
inserts its own (SmolLM2 does) uses it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from bruno.evaluation.capability import MMLUSettings, few_shot_examples, load_questions
from bruno.evaluation.scoring import build_evaluator
from bruno.evaluation.stats import wilson_interval
from bruno.model.loading import ModelSettings, load_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "eval" / "general_knowledge_mc.jsonl"
CHANCE = 0.25
GATE = CHANCE + 0.10


def measure(model, tokenizer, settings: MMLUSettings) -> dict:
    questions = load_questions(settings)
    start = time.perf_counter()
    evaluator = build_evaluator(settings, tokenizer, questions, few_shot_examples(settings, questions))
    result = evaluator.evaluate(model)
    low, high = wilson_interval(result.n_correct, result.n)
    by_subject: dict[str, list[bool]] = {}
    for row in result.rows:
        by_subject.setdefault(row["subject"], []).append(bool(row["correct"]))
    figures = {
        "scoring": settings.scoring,
        "chat_template": settings.use_chat_template,
        "few_shot": settings.mmlu_few_shot,
        "n": result.n,
        "correct": result.n_correct,
        "accuracy": result.accuracy,
        "ci95": [low, high],
        "passes_gate": low >= GATE,
        "by_subject": {s: sum(v) / len(v) for s, v in sorted(by_subject.items())},
        "seconds": time.perf_counter() - start,
    }
    if settings.scoring == "cloze":
        unnormalised = sum(r["predicted_unnormalised"] == r["gold"] for r in result.rows)
        figures["accuracy_unnormalised"] = unnormalised / result.n
        figures["ci95_unnormalised"] = list(wilson_interval(unnormalised, result.n))
    else:
        figures["mean_letter_mass"] = sum(r["letter_mass"] for r in result.rows) / result.n
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (safetensors + tokenizer)")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--scorings", nargs="+", default=["letter", "cloze"], choices=["letter", "cloze"])
    parser.add_argument("--chat", nargs="+", default=["true", "false"], choices=["true", "false"])
    parser.add_argument(
        "--few-shot", type=int, default=0, help="k worked examples per subject from the train split"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, ModelSettings(name=args.model, device="cpu"))
    print(f"model {args.model}; set {DATA.relative_to(REPO)} split {args.split}; gate: lower 95 % bound >= "
          f"{GATE:.0%}; {platform.node()}, {torch.get_num_threads()} torch thread(s)")  # fmt: skip
    rows = []
    for scoring in args.scorings:
        for chat in args.chat:
            settings = MMLUSettings(
                source={"path": str(DATA), "record_split": args.split},
                few_shot_split="train",
                mmlu_categories=None,
                mmlu_samples_per_category=None,
                mmlu_few_shot=args.few_shot,
                use_chat_template=chat == "true",
                scoring=scoring,
            )
            figures = measure(model, tokenizer, settings)
            rows.append(figures)
            extra = (
                f"unnormalised {figures['accuracy_unnormalised']:.1%}"
                if scoring == "cloze"
                else f"letter mass {figures['mean_letter_mass']:.2f}"
            )
            print(
                f"{scoring:6s} chat={chat:5s} k={args.few_shot}: {figures['correct']}/{figures['n']} = "
                f"{figures['accuracy']:.1%} [{figures['ci95'][0]:.1%}, {figures['ci95'][1]:.1%}] "
                f"gate {'PASS' if figures['passes_gate'] else 'fail'}; {extra}; {figures['seconds']:.0f} s",
                flush=True,
            )
            print("    by subject: " + ", ".join(f"{s} {v:.0%}" for s, v in figures["by_subject"].items()))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
