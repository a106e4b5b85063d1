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

from bruno.config import resolve_variants, validate_config
from bruno.errors import BrunoError

SCHEMA = REPO / "config" / "schema.yaml"
try:
    validate_config(config, SCHEMA)
    VARIANTS = resolve_variants(config, SCHEMA)
except BrunoError as error:
    raise WorkflowError(str(error)) from None

if "base" in VARIANTS:
    raise WorkflowError("config key 'variants.base': 'base' is reserved for the unedited model; rename the variant.")

STAGES = ["ablated"]
SETS = ["harmful", "harmless"]
SPLITS = ["train", "val", "test"]
IS_ORGANISM = config["model"]["name"] == "organism"
MODEL_PATH = "results/organism" if IS_ORGANISM else config["model"]["name"]


wildcard_constraints:
    variant="|".join(VARIANTS),
    stage="|".join(STAGES),


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


def get_stage_model(wildcards):
    return f"results/{wildcards.variant}/{wildcards.stage}"


def prompt_file(set_name, split):
    return f"results/prompts/{set_name}_{split}.jsonl"


def get_final_outputs():
    outputs = ["results/report.html", "results/eval/base/metrics.json"]
    for variant in VARIANTS:
        outputs.append(f"results/{variant}/best_trial.json")
        outputs += [f"results/eval/{variant}/{stage}/metrics.json" for stage in STAGES]
    return outputs
