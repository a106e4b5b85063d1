"""Does the SelfCheck-style hallucination score mean anything on a real model? (A measurement, not a test.)

On the real factual questions (data/eval/general_facts_qa.jsonl, one split) the model answers greedily (right or wrong
against the gold answer, as the evaluation judges it) and samples n answers per question (the score: 1 - mean pairwise
similarity of their MiniLM embeddings). The figure is the AUC of the score for telling wrong from right greedy
answers, P(score of a wrong answer > score of a right one), ties counted half (0.5 = no information), with a seeded
percentile-bootstrap 95 % interval over questions. Printed, and written as JSON with `--json`.

    PYTHONPATH=src .venv/bin/python tools/hallucination_auc.py --model /tmp/smollm2-dequant --temperatures 1.0 0.3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bruno.evaluation.embedding import SentenceEmbedder
from bruno.evaluation.hallucination import HallucinationDetector, load_factual_questions
from bruno.evaluation.stats import wilson_interval
from bruno.model.loading import ModelSettings, load_model

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "eval" / "general_facts_qa.jsonl"


def auc(scores: np.ndarray, wrong: np.ndarray) -> float:
    """P(score of a random wrong answer > that of a random right one), ties half (Mann-Whitney)."""
    pos, neg = scores[wrong], scores[~wrong]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def bootstrap_auc(scores: np.ndarray, wrong: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, len(scores), len(scores))
        value = auc(scores[idx], wrong[idx])
        if not np.isnan(value):
            values.append(value)
    return [float(v) for v in np.quantile(values, [0.025, 0.975])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--split", default="test", choices=["val", "test"])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, ModelSettings(name=args.model, device="cpu"))
    questions = load_factual_questions({"path": str(DATA), "record_split": args.split})
    embedder = SentenceEmbedder(None)
    results = []
    for temperature in args.temperatures:
        start = time.perf_counter()
        detector = HallucinationDetector(tokenizer, questions, embedder, args.samples, temperature,
                                         args.max_new_tokens, seed=0)  # fmt: skip
        rows = detector.evaluate(model).rows
        scores = np.array([r["score"] for r in rows])
        wrong = np.array([not r["correct"] for r in rows])
        n_right = int((~wrong).sum())
        figures = {
            "temperature": temperature,
            "samples": args.samples,
            "max_new_tokens": args.max_new_tokens,
            "split": args.split,
            "n": len(rows),
            "greedy_correct": n_right,
            "greedy_accuracy": n_right / len(rows),
            "greedy_accuracy_ci95": list(wilson_interval(n_right, len(rows))),
            "greedy_accuracy_by_group": {
                g: float(np.mean([r["correct"] for r in rows if r["group"] == g]))
                for g in ("known", "unknown")
            },
            "mean_score_right": float(scores[~wrong].mean()),
            "mean_score_wrong": float(scores[wrong].mean()),
            "auc_wrong_vs_right": auc(scores, wrong),
            "auc_ci95": bootstrap_auc(scores, wrong),
            "seconds": time.perf_counter() - start,
            "rows": rows,
        }
        results.append(figures)
        print(
            f"T={temperature}: greedy right {n_right}/{len(rows)} = {figures['greedy_accuracy']:.1%} "
            f"[{figures['greedy_accuracy_ci95'][0]:.1%}, {figures['greedy_accuracy_ci95'][1]:.1%}] "
            f"(common {figures['greedy_accuracy_by_group']['known']:.0%}, obscure "
            f"{figures['greedy_accuracy_by_group']['unknown']:.0%}); score right {figures['mean_score_right']:.3f}, "
            f"wrong {figures['mean_score_wrong']:.3f}; AUC {figures['auc_wrong_vs_right']:.3f} "
            f"[{figures['auc_ci95'][0]:.3f}, {figures['auc_ci95'][1]:.3f}]; {figures['seconds']:.0f} s",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
