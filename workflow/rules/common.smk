# Settings, validation and the target lists shared by every rule. The lists come from mair.pipeline.targets;
# rules only name files and call the `mair` command.
import os
from pathlib import Path

# The pipeline reads, tracks and passes on its own checkout's params/ (every `mair` command of every job, here or
# on SLURM, inherits this), whichever checkout the installed mair package came from.
os.environ["MAIR_PARAMS_DIR"] = str(Path(workflow.basedir, "params").resolve())

from mair.pipeline import gpus, settings, slurm, targets
from mair.tasks import TASKS
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate


def _check_config():
    """Validate the config against workflow/schemas/config.schema.yaml with a one-line message on error."""
    schema = workflow.source_path("../schemas/config.schema.yaml")
    settings.coerce_cli_config(config, schema)
    try:
        validate(config, "../schemas/config.schema.yaml")
    except WorkflowError as error:
        raise WorkflowError(settings.config_error_message(str(error), schema)) from None
    try:
        return targets.selected_experiments(config)
    except settings.PipelineError as error:
        raise WorkflowError(f"invalid pipeline config: {error}") from None


EXPS = _check_config()
SCOPE = config["scope"]
DATA = config["data_dir"].rstrip("/")
# Everything is written under <results_dir>/<weights>/ (trained or published): the two sources never mix.
WEIGHTS = settings.weights_mode(config)
RESULTS = settings.results_root(config["results_dir"], config)
RUNS = config["runs_dir"].rstrip("/")
SLURM = config["slurm"]
# Retries belong to the Snakemake that submits jobs: each retry is a new job (a new SLURM allocation). The
# Snakemake inside a job (remote execution) never retries, so a training stopped by its time limit is not
# started again in the allocation that is about to end.
RETRIES = {kind: 0 for kind in config["retries"]} if workflow.remote_exec else config["retries"]

# Every dataset any experiment uses: the demo set builds them all at once.
ALL_DATASETS = targets.needed_datasets(targets.all_experiments())
# Datasets that are downloaded (derived sets such as df2k are built from others by `mair data prepare`).
DOWNLOADABLE = targets.downloads(ALL_DATASETS)

# precision: exact runs every training and evaluation eager in true fp32 (mair train/evaluate --exact).
EXACT_FLAG = " --exact" if config["precision"] == "exact" else ""

# Extra environment of the jobs that log to MLflow.
MLFLOW_ENV = f"MLFLOW_TRACKING_URI='{config['mlflow_uri']}' " if config["mlflow_uri"] else ""


wildcard_constraints:
    scope="demo|paper",
    exp="|".join(targets.all_experiments()),
    dataset="[a-z0-9][a-z0-9_]*",


# Locally, never run more cards' worth of jobs at once than the machine has (local_gpus: auto counts them).
# Snakemake scales a job asking for more down to the limit (mair train keeps the paper's effective batch by
# accumulation); run-with-gpus gives each job cards of its own. An explicit `--resources gpu=N` (the slurm
# profile sets one: GPUs in use at once on the cluster) wins.
if workflow.is_main_process and "gpu" not in workflow.global_resources:
    _gpu_limit = gpus.local_gpu_limit(config)
    if _gpu_limit is not None:
        workflow.register_resource("gpu", _gpu_limit)


def job_env(wc, resources, threads):
    """Environment of a training or evaluation: the MLflow store, and on CPU one BLAS/OpenMP pool per core."""
    return MLFLOW_ENV + (f"OMP_NUM_THREADS={threads} " if resources.gpu == 0 else "")


def attempt_number(wc, attempt):
    """Snakemake's attempt of this job (1, 2, ...): `python -m mair.pipeline.jobstep --attempt` reads it."""
    return attempt


onstart:
    # Before the first sbatch (main process, real runs only): the status command that works on this cluster,
    # and the SLURM job logs under the scope's results folder.
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        executor_settings = workflow.executor_settings
        try:
            works, error = slurm.sacct_probe()
            command, note = slurm.choose_status_command(
                executor_settings.status_command, works, error, slurm.min_job_age_s(),
                int(executor_settings.init_seconds_before_status_checks or 40),
            )
        except slurm.SlurmSetupError as problem:
            raise SystemExit(str(problem)) from None
        executor_settings.status_command = command
        if note:
            logger.warning(note)
        executor = getattr(getattr(workflow, "scheduler", None), "_executor", None)
        if executor_settings.logdir is None and hasattr(executor, "slurm_logdir"):
            executor.slurm_logdir = Path(workflow.workdir_init, RESULTS, SCOPE, "logs", "slurm")
