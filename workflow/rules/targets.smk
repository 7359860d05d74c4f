# Targets. The scope (demo | paper) comes from the config: --config scope=paper or the slurm profile.
# `experiments` in the config narrows every target to those experiments.


def evals_of(exps):
    return [f for e in exps for f in targets.eval_files(RESULTS, SCOPE, e, config)]


rule reproduce_tables:
    """Every table of the paper, ours beside the published numbers: results/<weights>/<scope>/tables/."""
    localrule: True
    input:
        targets.table_files(RESULTS, SCOPE),
        [targets.metrics_file(RESULTS, SCOPE, e) for e in EXPS],


# One target per task of mair/tasks.py (reproduce_sr, reproduce_light_sr, ...): that task's evaluations.
for _task in TASKS.values():

    rule:
        name:
            _task.target
        localrule: True
        input:
            evals_of(targets.experiments_of_tasks([_task.name], config)),

    workflow.get_rule(_task.target).docstring = _task.target_help


rule download_all:
    """Every download of the selected experiments (demo scope: the embedded demo set)."""
    localrule: True
    input:
        (
            [targets.extracted_marker(DATA, d) for d in targets.downloads(targets.pipeline_datasets(EXPS, config))]
            if SCOPE == "paper"
            else targets.data_markers(DATA, targets.pipeline_datasets(EXPS, config), "demo")
        ),


rule prepare_all:
    """Every prepared dataset of the selected experiments, summed up in results/<weights>/<scope>/data/manifest.json."""
    localrule: True
    input:
        targets.manifest_file(RESULTS, SCOPE),


rule train_all:
    """Every training (final weights in results/<weights>/<scope>/weights/)."""
    localrule: True
    input:
        [targets.weights_file(RESULTS, SCOPE, e) for e in EXPS],


rule evaluate_all:
    """Every evaluation (results/<weights>/<scope>/eval/) and its metrics (results/<weights>/<scope>/metrics/<exp>.json)."""
    localrule: True
    input:
        evals_of(EXPS),
        [targets.metrics_file(RESULTS, SCOPE, e) for e in EXPS],
