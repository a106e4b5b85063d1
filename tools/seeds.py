"""Robustness of the method across seeds (a measurement, not a test).

Runs a config with several seeds, one variant (default norm_row) and healing off (to save time): directions, search,
selection, baking and evaluation, each seed in its own working directory under ROOT/seed{k}/, then prints one row per
seed and writes ROOT/seeds.json. `--seed-key` names the config key set to each seed: `organism.seed` (default; the
organism is trained anew, the method keeps the master seed) or `seed` (the master seed: with config/real.yaml the
safety tuning, directions sample, search and everything else).

    .venv/bin/python tools/seeds.py --seeds 0 1 2 --cores 2                     # organisms (config/config.yaml)
    .venv/bin/python tools/seeds.py --config config/real.yaml --seed-key seed --seeds 0 1 \
        --root runs/real-seeds                                                      # SmolLM2, implant + method
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
METRICS = ("refusal_rate_harmful", "refusal_rate_harmless", "kl_divergence", "mmlu_accuracy")


def run_seed(
    seed: int, root: Path, cores: int, extra: list[str], config_path: Path, seed_key: str, variant: str
) -> dict:
    workdir = root / f"seed{seed}"
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    if not (workdir / "data").exists():
        (workdir / "data").symlink_to(REPO / "data")
    # The config with another seed, one variant (as the config defines it) and no healing.
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    *parents, key = seed_key.split(".")
    section = config
    for name in parents:
        section = section.setdefault(name, {})
    section[key] = seed
    config.setdefault("healing", {})["enable_post_abliteration_finetuning"] = False
    config["variants"] = {variant: (config.get("variants") or {}).get(variant, {})}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    start = time.perf_counter()
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--workflow-profile", "none",
        "--cores", str(cores), "--configfile", "config/config.yaml", *extra,
        "--", "results/eval/base/metrics.json", f"results/eval/{variant}/ablated/metrics.json",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=workdir, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"seed {seed} failed:\n{result.stderr[-3000:]}")
    row: dict = {"seed": seed, "seconds": round(time.perf_counter() - start, 1)}
    for stage in ("base", f"{variant}/ablated"):
        metrics = json.loads((workdir / "results" / "eval" / stage / "metrics.json").read_text())
        prefix = stage.split("/")[-1]
        for name in METRICS:
            row[f"{prefix}_{name}"] = metrics[name]["value"]
            row[f"{prefix}_{name}_n"] = metrics[name]["n"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--root", type=Path, default=REPO / "results" / "robustness")
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--seed-key", default="organism.seed", help="dotted config key set to each seed")
    parser.add_argument("--variant", default="norm_row")
    args, extra = parser.parse_known_args()
    rows = [
        run_seed(seed, args.root, args.cores, extra, args.config, args.seed_key, args.variant)
        for seed in args.seeds
    ]
    header = f"{'seed':>4} {'base harmful':>12} {'base harmless':>13} {'abl harmful':>11} {'abl harmless':>12} {'abl KL':>7} {'base MC':>7} {'abl MC':>6}"  # noqa: E501
    print(header)
    for r in rows:
        print(
            f"{r['seed']:>4} {r['base_refusal_rate_harmful']:>12.3f} {r['base_refusal_rate_harmless']:>13.3f} "
            f"{r['ablated_refusal_rate_harmful']:>11.3f} {r['ablated_refusal_rate_harmless']:>12.3f} "
            f"{r['ablated_kl_divergence']:>7.4f} {r['base_mmlu_accuracy']:>7.3f} {r['ablated_mmlu_accuracy']:>6.3f}"
        )
    out = args.root / "seeds.json"
    out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(f"written {out}")


if __name__ == "__main__":
    main()
