"""Snakemake script for rules `optimize`, `init_study` and `optimize_worker`."""

import _bruno_path  # noqa: F401  (puts src/ on sys.path)

from bruno.runtime import run_job


def main(snakemake, log):
    from bruno.config import settings_from_dict
    from bruno.edit.plan import AbliterationSettings
    from bruno.evaluation.stage import EvaluationSettings
    from bruno.jobs import optimize
    from bruno.model.loading import ModelSettings
    from bruno.search.select import SelectionSettings
    from bruno.search.space import SearchSettings

    settings = settings_from_dict(SearchSettings, snakemake.params.search, "search")
    # only the selection keys the search reads (rules/common.smk: get_confirmation)
    selection = settings_from_dict(SelectionSettings, snakemake.params.confirmation, "selection")
    several = snakemake.rule == "optimize" and settings.optimize_workers > 1  # the workers ran the trials
    if several and selection.confirm_prompts == 0:
        optimize.snapshot_only(snakemake.params.journal, snakemake.output.study)
        return
    ctx = optimize.prepare(
        model_path=snakemake.params.model_path,
        model_settings=settings_from_dict(ModelSettings, snakemake.params.model, "model"),
        directions_path=snakemake.input.directions,
        harmful_val_path=snakemake.input.harmful,
        harmless_val_path=snakemake.input.harmless,
        settings=settings,
        abliteration=settings_from_dict(AbliterationSettings, snakemake.params.abliteration, "abliteration"),
        refusal_markers=snakemake.params.refusal_markers,
        # only the keys of the enabled extra objectives (rules/common.smk: get_search_evaluation)
        evaluation=settings_from_dict(EvaluationSettings, snakemake.params.evaluation, "evaluation"),
        seed=snakemake.params.seed,
        parallel=snakemake.rule != "init_study" and not several,  # creating or confirming runs no trials
    )
    seed = snakemake.params.seed
    if snakemake.rule == "init_study":
        optimize.init(ctx, seed, snakemake.params.journal)
    elif snakemake.rule == "optimize_worker":
        optimize.work(ctx, seed, snakemake.params.journal, int(snakemake.wildcards.worker))
    elif several:
        optimize.snapshot_only(snakemake.params.journal, snakemake.output.study, ctx, selection)
    else:
        optimize.run(ctx, seed, snakemake.params.journal, snakemake.output.study, selection)


run_job(snakemake, main)
