# Training: one job per experiment and scope. Checkpoints live in runs/<scope>/<exp>/ and are no declared
# output, so Snakemake never deletes them: a failed or timed-out job is retried as a new job (retries:) and
# `mair train` resumes from its newest checkpoint; a job cancelled by a user (scancel) is not retried (see
# mair/pipeline/jobstep.py). The weights file is written atomically at the very end.


def train_init(wc):
    """The weights this training starts from (x3/x4 from x2, sigma 25/50 from sigma 15), if any."""
    init = targets.init_experiment(wc.exp, config)
    return [targets.weights_file(RESULTS, wc.scope, init)] if init else []


def train_device(wc, resources):
    return f"--gpus {resources.gpu}" if resources.gpu > 0 else "--device cpu"


if WEIGHTS == "trained":  # published weights are fetched instead (weights.smk), never trained

    rule train:
        input:
            data=lambda wc: targets.data_markers(DATA, targets.train_datasets(wc.exp), wc.scope),
            init=train_init,
            experiment="params/experiments/{exp}.yaml",
        output:
            targets.weights_file(RESULTS, "{scope}", "{exp}"),
        log:
            f"{RESULTS}/{{scope}}/logs/train/{{exp}}.log",
        params:
            env=job_env,
            run_dir=f"{RUNS}/{{scope}}/{{exp}}",
            data_dir=DATA,
            results_dir=RESULTS,
            device=train_device,
            # init_quirk: fixed (MaIR-T x3 from T x2 instead of the official S x2, docs/training.md)
            init=lambda wc: " --init-fix-t-x3" if targets.init_override(wc.exp, config) else "",
            # precision: exact (eager, true fp32) instead of the fast default
            exact=EXACT_FLAG,
        retries: RETRIES["train"]
        threads: 1
        resources:
            gpu=lambda wc: gpus.train_gpus(wc.exp, wc.scope, config),
            runtime=SLURM["train_runtime"],
            mem_mb=lambda wc: slurm.job_mem_mb(gpus.train_gpus(wc.exp, wc.scope, config), SLURM),
            mair_attempt=attempt_number,
            cpus_per_gpu=SLURM["cpus_per_gpu"],
            slurm_partition=SLURM["partition"],
            slurm_account=SLURM["account"],
            qos=SLURM["qos"],
            constraint=SLURM["constraint"],
            # SIGTERM 5 minutes before the time limit: mair train checkpoints and exits 75, the retry resumes.
            slurm_extra=" ".join(filter(None, [f"--signal=TERM@{SLURM['stop_signal_s']}", SLURM["extra"]])),
        # exec: the shell gives its place to the training, so that a signal reaches it and its exit status (75 when
        # stopped by SIGTERM) is the job's; jobstep appends every attempt's output to runs/<scope>/<exp>/pipeline.log.
        shell:
            "{params.env}exec python -m mair.pipeline.jobstep --run-dir {params.run_dir} --attempt {resources.mair_attempt} "
            "--label 'train {wildcards.exp}' -- python -m mair.pipeline run-with-gpus {resources.gpu} -- "
            "mair train {wildcards.exp} --scope {wildcards.scope} {params.device} --run-dir {params.run_dir} "
            "--data-dir {params.data_dir} --results-dir {params.results_dir}{params.init}{params.exact} > {log} 2>&1"
