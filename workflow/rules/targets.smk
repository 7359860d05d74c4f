# Targets. The scope (demo | paper) comes from the config: --config scope=paper or the slurm profile.
# `experiments` in the config narrows every target to those experiments.


def evals_of(exps):
    return [f for e in exps for f in targets.eval_files(RESULTS, SCOPE, e, config)]


def task_evals(target):
    return evals_of(targets.experiments_of_tasks(targets.TASK_TARGETS[target], config))


rule reproduce_tables:
    """Every table of the paper, ours beside the published numbers: results/<weights>/<scope>/tables/."""
    localrule: True
    input:
        targets.table_files(RESULTS, SCOPE),
        [targets.metrics_file(RESULTS, SCOPE, e) for e in EXPS],


rule reproduce_sr:
    """Classic SR x2/x3/x4 (MaIR and MaIR+) on Set5, Set14, B100, Urban100, Manga109."""
    localrule: True
    input:
        task_evals("reproduce_sr"),


rule reproduce_light_sr:
    """Lightweight SR, MaIR-S and MaIR-T x2/x3/x4."""
    localrule: True
    input:
        task_evals("reproduce_light_sr"),


rule reproduce_denoising:
    """Colour denoising, sigma 15/25/50, on McMaster, Kodak24, CBSD68, Urban100."""
    localrule: True
    input:
        task_evals("reproduce_denoising"),


rule reproduce_real_denoising:
    """Real denoising: SIDD validation and the DND submission bundle."""
    localrule: True
    input:
        task_evals("reproduce_real_denoising"),


rule reproduce_deblurring:
    """Motion deblurring: GoPro and HIDE."""
    localrule: True
    input:
        task_evals("reproduce_deblurring"),


rule reproduce_dehazing:
    """Dehazing: SOTS indoor (ITS), SOTS outdoor (OTS), RESIDE-6K."""
    localrule: True
    input:
        task_evals("reproduce_dehazing"),


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
