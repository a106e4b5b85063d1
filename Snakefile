# Bruno: abliteration pipeline. Table of contents only; see rules/ for the stages and config/schema.yaml for settings.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/prompts.smk"
include: "rules/organism.smk"
include: "rules/directions.smk"
include: "rules/optimize.smk"
include: "rules/abliterate.smk"
include: "rules/heal.smk"
include: "rules/evaluate.smk"
include: "rules/summary.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
