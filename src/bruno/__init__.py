"""Bruno: abliteration pipeline library.

One subpackage per stage family, each under the ones before it (no import cycles):
- `model`: loading (safetensors, GGUF, placement on devices), chat formatting, batching, generation, prefix re-use;
- `directions`: refusal directions (difference of means, PCA/probe/ensemble methods, concept cones, CAA);
- `edit`: the weight edit (directional ablation, norm preservation) and what a parameter set means;
- `search`: the Optuna search (space, resumable study, trial scoring, trial workers, confirmation, selection);
- `heal`: DPO healing with a LoRA adapter;
- `evaluation`: held-out evaluation (refusal detectors, KL, capability, hallucination, statistics, A/B summary);
- `report`: the comparison report; `organism` and `safety`: the embedded default model and the refusal implant;
- `jobs`: one thin module per Snakemake rule.
`config`, `errors`, `io`, `prompts` and `runtime` are shared by all. Importing the package itself is cheap: heavy
libraries load only in the modules that need them. The benchmark and browser tooling is the separate `bruno_tools`.
"""

__version__ = "0.1.0"
