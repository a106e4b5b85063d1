# Bruno: abliteration pipeline. Table of contents only; see rules/ for the stages and config/schema.yaml for settings.
# No `configfile:` here on purpose: a config given with --configfile is the whole run (on top of the schema's
# defaults), and config/config.yaml (the embedded organism default) is read only when none is given (rules/common.smk).
from snakemake.utils import min_version

min_version("9.0")


include: "rules/common.smk"
include: "rules/prompts.smk"
include: "rules/organism.smk"
include: "rules/model.smk"
include: "rules/safety.smk"
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
