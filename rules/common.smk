# Config validation, variant resolution, wildcard constraints and input helpers. Included first.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
SRC = str(REPO / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
# Jobs (scripts, also under conda or SLURM) import the library from the working tree.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [SRC] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != SRC]
)

from bruno.config import expand_replicates, resolve_variants, validate_config
from bruno.errors import BrunoError

SCHEMA = REPO / "config" / "schema.yaml"
try:
    validate_config(config, SCHEMA)
    VARIANTS = resolve_variants(config, SCHEMA)
    # {instance: (variant, replicate index)}; replicates > 1 adds `{variant}_rep{k}` instances with offset seeds.
    REPLICATE_OF = expand_replicates(VARIANTS, config["replicates"], config["seed"])
except BrunoError as error:
    raise WorkflowError(str(error)) from None

if "base" in VARIANTS:
    raise WorkflowError("config key 'variants.base': 'base' is reserved for the unedited model; rename the variant.")

STAGES = ["ablated", "healed"]
SETS = ["harmful", "harmless"]
SPLITS = ["train", "val", "test"]
IS_ORGANISM = config["model"]["name"] == "organism"
MODEL_PATH = "results/organism" if IS_ORGANISM else config["model"]["name"]


wildcard_constraints:
    variant="|".join(VARIANTS),
    stage="|".join(STAGES),
    worker=r"\d+",


def check_prompt_sources():
    """Fail before any job if a configured local prompt file is missing, naming the config key."""
    for set_name, spec in config["data"].items():
        for split, source in (spec or {}).items():
            if source and "path" in source and not Path(source["path"]).exists():
                raise WorkflowError(
                    f"config key 'data.{set_name}.{split}.path': prompt file not found: {source['path']} "
                    "(paths are relative to the working directory)."
                )


check_prompt_sources()


def variant_config(wildcards):
    return VARIANTS[wildcards.variant]


def variant_section(section):
    """params function: one section of the resolved config of the job's variant."""
    return lambda wildcards: VARIANTS[wildcards.variant][section]


def variant_seed(wildcards):
    search = VARIANTS[wildcards.variant]["search"]
    return search["seed"] if search["seed"] is not None else config["seed"]


def get_prompt_sources(wildcards=None):
    return sorted(
        {
            source["path"]
            for spec in config["data"].values()
            for source in (spec or {}).values()
            if source and "path" in source
        }
    )


def get_base_model():
    """Input for jobs that load the base model: the organism directory, a local model directory, or nothing (hub id)."""
    if IS_ORGANISM:
        return ["results/organism"]
    return [MODEL_PATH] if Path(MODEL_PATH).exists() else []


def variant_stages(variant):
    """The edited-model stages a variant produces: the healed model only where healing is enabled for it."""
    healing = VARIANTS[variant]["healing"]["enable_post_abliteration_finetuning"]
    return ["ablated", "healed"] if healing else ["ablated"]


def get_stage_metrics(wildcards=None):
    return [
        f"results/eval/{variant}/{stage}/metrics.json"
        for variant in VARIANTS
        for stage in variant_stages(variant)
    ]


def get_stage_model(wildcards):
    return f"results/{wildcards.variant}/{wildcards.stage}"


def prompt_file(set_name, split):
    return f"results/prompts/{set_name}_{split}.jsonl"


def get_final_outputs():
    outputs = ["results/report.html", "results/ab_summary.csv", "results/eval/base/metrics.json"]
    for variant in VARIANTS:
        outputs.append(f"results/{variant}/best_trial.json")
    return outputs + get_stage_metrics()


def get_ab_runs():
    """What ab_summary reads for every variant instance (paths are inputs of the rule through the expansions)."""
    return [
        {
            "instance": instance,
            "variant": REPLICATE_OF[instance][0],
            "replicate": REPLICATE_OF[instance][1],
            "study": f"results/{instance}/study.db",
            "directions": f"results/{instance}/directions.pt",
            "benchmark": f"benchmarks/optimize/{instance}.tsv",
            "metrics": {stage: f"results/eval/{instance}/{stage}/metrics.json" for stage in variant_stages(instance)},
        }
        for instance in VARIANTS
    ]


def get_optimize_inputs(wildcards):
    """One worker: the search inputs. Several: the workers' sentinels (the job only writes the snapshot)."""
    workers = VARIANTS[wildcards.variant]["search"]["optimize_workers"]
    if workers > 1:
        return {
            "workers": expand("results/{variant}/optuna/worker{worker}.done", variant=wildcards.variant, worker=range(workers))
        }
    return {
        "model": get_base_model(),
        "directions": f"results/{wildcards.variant}/directions.pt",
        "harmful": prompt_file("harmful", "val"),
        "harmless": prompt_file("harmless", "val"),
    }
