# Evaluation: one job per experiment and variant (MaIR, or MaIR+ = 8x self-ensemble, files <dataset>+.json) over
# all of the experiment's test sets, so that the network is built once. `mair evaluate` writes each per-image CSV
# as it goes (a rerun skips finished images) and each summary JSON last, atomically: the JSONs are the outputs.
# Rules: evaluate_<exp> and evaluate_plus_<exp>, for every experiment (which variants run: self_ensemble).
# weights: published evaluates the authors' file (input: the fetch job's record of it, weights.smk).


def evaluate_rule_name(exp, plus):
    return f"evaluate_plus_{exp}" if plus else f"evaluate_{exp}"


for _exp in targets.all_experiments():
    for _plus in ("", "+"):

        rule:
            name:
                evaluate_rule_name(_exp, _plus)
            input:
                weights=lambda wc, exp=_exp: targets.eval_weights_input(RESULTS, wc.scope, exp, config),
                data=lambda wc, exp=_exp: targets.data_markers(DATA, targets.test_datasets(exp), wc.scope),
            output:
                [targets.eval_file(RESULTS, "{scope}", _exp, d, _plus) for d in targets.test_datasets(_exp)],
            log:
                f"{RESULTS}/{{scope}}/logs/evaluate/{_exp}{_plus}.log",
            params:
                env=job_env,
                exp=_exp,
                source=WEIGHTS,
                weights=lambda wc, exp=_exp: targets.eval_weights_path(RESULTS, DATA, wc.scope, exp, config),
                datasets=" ".join(targets.test_datasets(_exp)),
                ensemble=" --self-ensemble" if _plus else "",
                exact=EXACT_FLAG,
                data_dir=DATA,
                results_dir=RESULTS,
            retries: RETRIES["evaluate"]
            threads: 1
            resources:
                gpu=lambda wc: gpus.eval_gpus(wc.scope, config),
                runtime=SLURM["eval_runtime"],
                mem_mb=lambda wc: slurm.job_mem_mb(gpus.eval_gpus(wc.scope, config), SLURM),
                cpus_per_gpu=SLURM["cpus_per_gpu"],
                slurm_partition=SLURM["partition"],
                slurm_account=SLURM["account"],
                qos=SLURM["qos"],
                constraint=SLURM["constraint"],
                slurm_extra=SLURM["extra"],
            shell:
                "{params.env}python -m mair.pipeline run-with-gpus {resources.gpu} -- "
                "mair evaluate {params.exp} --weights {params.weights} --datasets {params.datasets}{params.ensemble}"
                "{params.exact} "
                "--scope {wildcards.scope} --results-dir {params.results_dir} --data-dir {params.data_dir} --quiet "
                "--weights-source {params.source} "
                "> {log} 2>&1"


rule eval_metrics:
    """PSNR/SSIM of every test set and variant of an experiment in one small file: DVC's metrics."""
    input:
        lambda wc: targets.eval_files(RESULTS, wc.scope, wc.exp, config),
    output:
        targets.metrics_file(RESULTS, "{scope}", "{exp}"),
    localrule: True
    shell:
        "python -m mair.pipeline eval-metrics --out {output} {input}"
