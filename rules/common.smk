# Config validation, variant resolution, wildcard constraints and input helpers. Included first.
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

from snakemake.exceptions import WorkflowError

REPO = Path(workflow.basedir)
SRC = str(REPO / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from bruno.config import (
    deep_merge,
    expand_replicates,
    resolve_variants,
    stage_seed,
    validate_config,
)
from bruno.errors import BrunoError
from bruno.model.source import resolve_model_source
from bruno.safety import base_model_label

SCHEMA = REPO / "config" / "schema.yaml"
# The embedded default run (the refusal organism). Used only when no --configfile is given: a config file a user
# passes is the whole run on top of the schema's defaults, and nothing of this file leaks into it.
DEFAULT_CONFIG = REPO / "config" / "config.yaml"


def apply_default_config():
    """Without --configfile, the run's config is config/config.yaml with any --config values on top."""
    if workflow.config_settings.configfiles:
        return
    with open(DEFAULT_CONFIG, encoding="utf-8") as f:
        default = yaml.safe_load(f) or {}
    merged = deep_merge(default, config)
    config.clear()
    config.update(merged)


def resolve_shipped_paths(evaluation):
    """Relative evaluation data paths missing in the working directory are taken from the repository (shipped data/)."""

    def resolve(path):
        if (
            Path(path).is_absolute()
            or Path(path).exists()
            or not (REPO / path).exists()
        ):
            return path
        return str(REPO / path)

    sources = [
        evaluation["borderline"],
        evaluation["mmlu"]["source"],
        evaluation["hallucination"]["source"],
    ]
    for source in sources:
        if source and "path" in source:
            source["path"] = resolve(source["path"])
    detector = evaluation["neural_detector"]
    detector["labels_path"] = resolve(detector["labels_path"])


try:
    apply_default_config()
    validate_config(config, SCHEMA)
    resolve_shipped_paths(config["evaluation"])
    VARIANTS = resolve_variants(config, SCHEMA)
    # {instance: (variant, replicate index)}; replicates > 1 adds `{variant}_rep{k}` instances with offset seeds.
    REPLICATE_OF = expand_replicates(VARIANTS, config["replicates"], config["seed"])
    # organism | directory | gguf | hub; local sources are checked here, before any job runs.
    MODEL_SOURCE = resolve_model_source(config["model"]["name"])
    # An unsupported model family stops here, before any job (bruno.model.families reads config.json only).
    if MODEL_SOURCE.kind == "directory":
        from bruno.model.families import check_model_dir

        check_model_dir(MODEL_SOURCE.path)
except BrunoError as error:
    raise WorkflowError(str(error)) from None

if "base" in VARIANTS:
    raise WorkflowError(
        "config key 'variants.base': 'base' is reserved for the unedited model; rename the variant."
    )

STAGES = ["ablated", "healed"]
SETS = ["harmful", "harmless"]
SPLITS = ["train", "val", "test"]
IS_ORGANISM = MODEL_SOURCE.kind == "organism"
# Threads of every model job (torch threads). Override per rule with --set-threads.
MODEL_JOB_THREADS = workflow.cores
# The model as configured: the trained organism, the dequantised GGUF, the local directory, or the hub id.
UNTUNED_MODEL_PATH = {
    "organism": "results/organism",
    "gguf": "results/model",
    "directory": str(MODEL_SOURCE.path),
}.get(MODEL_SOURCE.kind, config["model"]["name"])
# With safety tuning on, rule safety_tune makes the base model of every later stage from the untuned one.
SAFETY_TUNED = config["safety_tuning"]["enabled"]
SAFETY_TUNED_PATH = "results/safety_tuned"
# Where jobs load the base model from.
MODEL_PATH = SAFETY_TUNED_PATH if SAFETY_TUNED else UNTUNED_MODEL_PATH
# What reports and logs call the base model (a safety-tuned one says that its refusal was implanted here).
BASE_MODEL_LABEL = base_model_label(config)


# Which of several ready jobs runs first (higher first; Snakemake's default is 0). The base evaluation gates every other
# evaluation; the search chain (directions, search, edit) and healing gate the stage evaluations, which only the
# report waits for. Without them, on 2 cores the real-model run left a healing job waiting 17 min behind three
# evaluations (2026-12-07, docs/real-model.md).
JOB_PRIORITY = {"evaluate_base": 3, "search": 2, "heal": 1}


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
    return stage_seed(VARIANTS[wildcards.variant]["search"]["seed"], config["seed"])


def get_prompt_sources(wildcards=None):
    sources = [
        source for spec in config["data"].values() for source in (spec or {}).values()
    ] + [config["evaluation"]["borderline"]]
    return sorted({source["path"] for source in sources if source and "path" in source})


def get_borderline_output():
    """The test-only borderline prompt file of rule `prompts`, when evaluation.borderline is set."""
    return (
        [prompt_file("borderline", "test")]
        if config["evaluation"]["borderline"]
        else []
    )


def get_evaluation_inputs(wildcards=None):
    """Data the evaluation reads besides the harmful/harmless test prompts (editing one re-runs the evaluations)."""
    evaluation = config["evaluation"]
    inputs = {}
    if evaluation["borderline"]:
        inputs["borderline"] = prompt_file("borderline", "test")
    for section, name in (("mmlu", "mmlu_data"), ("hallucination", "factual_data")):
        if evaluation[section]["enabled"] and "path" in evaluation[section]["source"]:
            inputs[name] = evaluation[section]["source"]["path"]
    labels = evaluation["neural_detector"]["labels_path"]
    if evaluation["refusal_detection_mode"] != "markers" or Path(labels).exists():
        inputs["refusal_labels"] = labels
    return inputs


def get_evaluation_settings():
    """params of the evaluate rules: the evaluation section without what the evaluation job does not read. That is
    `borderline` (rule `prompts` resolves it; its test file is an input) and the settings of a disabled capability or
    hallucination evaluation (kept: `enabled`, and the capability `scoring`, which names the columns of its empty
    CSV)."""
    evaluation = {
        key: value for key, value in config["evaluation"].items() if key != "borderline"
    }
    if not evaluation["mmlu"]["enabled"]:
        evaluation["mmlu"] = {
            "enabled": False,
            "scoring": evaluation["mmlu"]["scoring"],
        }
    if not evaluation["hallucination"]["enabled"]:
        evaluation["hallucination"] = {"enabled": False}
    return evaluation


def get_directions_refusal_markers(wildcards):
    """params function of the directions rule: the refusal markers, which the job reads only to find the train prompts
    the model refuses for CAA (directions.use_caa); None for a variant without CAA."""
    if VARIANTS[wildcards.variant]["directions"]["use_caa"]:
        return config["evaluation"]["refusal_markers"]
    return None


def get_untuned_model():
    """Input of the safety_tune rule, the model as configured (organism or dequantised-GGUF directory made by a rule, a
    local model directory), or nothing (hub id)."""
    return [] if MODEL_SOURCE.kind == "hub" else [UNTUNED_MODEL_PATH]


def get_untuned_model_path(wildcards, input):
    """params function of the safety_tune rule, where the untuned model is loaded from (its input directory, or the hub
    id)."""
    return str(input.model[0]) if input.model else UNTUNED_MODEL_PATH


def get_base_model():
    """Input for jobs that load the base model: the safety-tuned model when safety tuning is on (made by rule
    safety_tune), else the untuned model (see get_untuned_model)."""
    return [SAFETY_TUNED_PATH] if SAFETY_TUNED else get_untuned_model()


def get_gguf_file(wildcards):
    """The .gguf file rule `dequantize` reads (a job of it exists only when model.name names a GGUF)."""
    if MODEL_SOURCE.kind != "gguf":
        raise WorkflowError(
            f"results/model is made from a GGUF, but model.name '{config['model']['name']}' is not one."
        )
    return str(MODEL_SOURCE.path)


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


def get_same_model_candidate(wildcards):
    """For a healed model: the ablated model and its evaluation. A healing whose checkpoint selection kept step 0
    saves the ablated model again byte for byte; the evaluation job then copies the ablated model's figures instead
    of measuring the same model twice (it compares the files first)."""
    if wildcards.stage != "healed":
        return {}
    evaluation = f"results/eval/{wildcards.variant}/ablated"
    return {
        "same_as_model": f"results/{wildcards.variant}/ablated",
        **{
            f"same_as_{name}": f"{evaluation}/{name}.{'json' if name == 'metrics' else 'csv'}"
            for name in ("refusals", "mmlu", "hallucination", "metrics")
        },
    }


def prompt_file(set_name, split):
    return f"results/prompts/{set_name}_{split}.jsonl"


def get_final_outputs():
    outputs = [
        "results/report.html",
        "results/ab_summary.csv",
        "results/eval/base/metrics.json",
    ]
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
            "metrics": {
                stage: f"results/eval/{instance}/{stage}/metrics.json"
                for stage in variant_stages(instance)
            },
        }
        for instance in VARIANTS
    ]


def get_ab_settings():
    """params of the ab_summary rule: the edit settings its table shows per variant instance."""
    return {
        instance: {
            key: VARIANTS[instance]["abliteration"][key]
            for key in ("norm_preservation", "biprojected")
        }
        for instance in VARIANTS
    }


def get_report_inputs(wildcards=None):
    """Every file the report reads. Replicate instances enter only through the A/B summary."""
    shown = [v for v in VARIANTS if REPLICATE_OF[v][1] == 0]
    return {
        "base": "results/eval/base/metrics.json",
        "base_refusals": "results/eval/base/refusals.csv",
        "manifest": "results/prompts/manifest.json",
        "ab_summary": "results/ab_summary.csv",
        "ab_significance": "results/ab_significance.csv",
        "stages": get_stage_metrics(),
        "refusals": [
            f"results/eval/{v}/{s}/refusals.csv"
            for v in shown
            for s in variant_stages(v)
        ],
        "best": expand("results/{variant}/best_trial.json", variant=shown),
        "studies": expand("results/{variant}/study.db", variant=shown),
        "directions": expand("results/{variant}/directions.pt", variant=shown),
        "edits": expand("results/{variant}/ablation.json", variant=shown),
        "heal_logs": [
            f"results/{v}/heal_training_log.csv"
            for v in shown
            if "healed" in variant_stages(v)
        ],
    }


# What the search reads of the evaluation section (bruno.search.objectives.extra_objectives): for each extra objective, by
# its search switch, the evaluation subsection that holds its questions and the keys of it the objective uses. The
# rest of the section (the test-set generation, detectors, sample counts) is the evaluation's alone.
SEARCH_OBJECTIVE_SETTINGS = {
    "use_hallucination_detection": (
        "hallucination",
        ["source", "embedding_model", "temperature", "max_new_tokens"],
    ),
    "use_capability_objective": (
        "mmlu",
        ["source", "mmlu_categories", "use_chat_template", "batch_size", "scoring"],
    ),
}


def search_objective_sections(variant):
    """{evaluation subsection: the keys of it the search uses} for the variant's enabled extra objectives."""
    search = VARIANTS[variant]["search"]
    return {
        section: keys
        for switch, (section, keys) in SEARCH_OBJECTIVE_SETTINGS.items()
        if search[switch]
    }


def get_search_evaluation(wildcards):
    """params function of the search rules: the evaluation settings the variant's search reads, in the shape of the
    evaluation section (empty without extra objectives). An evaluation-only edit, such as evaluation.max_new_tokens,
    leaves every search alone."""
    evaluation = config["evaluation"]
    return {
        section: {key: evaluation[section][key] for key in keys}
        for section, keys in search_objective_sections(wildcards.variant).items()
    }


def get_search_inputs(wildcards):
    """What a search job reads: the base model, the variant's directions, the val prompts, and the question file of
    each enabled extra objective (its val split)."""
    inputs = {
        "model": get_base_model(),
        "directions": f"results/{wildcards.variant}/directions.pt",
        "harmful": prompt_file("harmful", "val"),
        "harmless": prompt_file("harmless", "val"),
    }
    for section in search_objective_sections(wildcards.variant):
        source = config["evaluation"][section]["source"]
        if "path" in source:
            inputs[f"{section}_questions"] = source["path"]
    return inputs


def get_optimize_inputs(wildcards):
    """One worker: the search inputs. Several: the workers' sentinels (the job only writes the snapshot), and the
    search inputs again when it confirms the candidates first."""
    workers = VARIANTS[wildcards.variant]["search"]["optimize_workers"]
    if workers > 1:
        sentinels = {
            "workers": expand(
                "results/{variant}/optuna/worker{worker}.done",
                variant=wildcards.variant,
                worker=range(workers),
            )
        }
        confirms = VARIANTS[wildcards.variant]["selection"]["confirm_prompts"] > 0
        return {**sentinels, **(get_search_inputs(wildcards) if confirms else {})}
    return get_search_inputs(wildcards)


CONFIRM_KEYS = ("confirm_prompts", "confirm_candidates", "confirm_max_new_tokens")


def get_confirmation(wildcards):
    """params function of the search rules: the selection keys the search job reads (bruno.search.confirm), so that
    a change of selection.max_refusal_rate re-runs only `select`."""
    selection = VARIANTS[wildcards.variant]["selection"]
    return {key: selection[key] for key in CONFIRM_KEYS}


def optimize_gpus(wildcards):
    """The optimize job needs the GPU only when it runs the search itself (one worker); otherwise it just copies."""
    return 1 if VARIANTS[wildcards.variant]["search"]["optimize_workers"] == 1 else 0


def get_model_path(wildcards, input):
    """params function: where the base model is loaded from (the input directory, or the hub id)."""
    value = input.get("model", [])
    paths = [value] if isinstance(value, str) else list(value)
    return str(paths[0]) if paths else MODEL_PATH


def directions_params(variant):
    """What the directions job of a variant depends on besides the base model and the train prompts (which every
    variant shares): its directions section, the refusal markers it reads (CAA) and its seed.
    """
    wildcards = SimpleNamespace(variant=variant)
    return {
        "directions": VARIANTS[variant]["directions"],
        "refusal_markers": get_directions_refusal_markers(wildcards),
        "seed": variant_seed(wildcards),
    }


def directions_sources():
    """{variant: the variant whose directions job it shares}: the first variant (in config order) with the same
    directions params computes them, the others copy its directions.pt (e.g. `baseline` and `norm_row`, which differ
    only in the edit)."""
    first = {}
    for variant in VARIANTS:
        key = json.dumps(directions_params(variant), sort_keys=True, default=str)
        first.setdefault(key, variant)
    return {
        variant: first[
            json.dumps(directions_params(variant), sort_keys=True, default=str)
        ]
        for variant in VARIANTS
    }


DIRECTIONS_SOURCE = directions_sources()


def directions_variants(computed):
    """wildcard constraint of the directions rules: the variants that compute (True) or copy (False) their directions;
    a pattern that matches nothing when there are none."""
    names = [v for v, source in DIRECTIONS_SOURCE.items() if (v == source) == computed]
    return "|".join(names) if names else "(?!)"


def get_shared_directions(wildcards):
    return f"results/{DIRECTIONS_SOURCE[wildcards.variant]}/directions.pt"
