# Data: download (verified, extracted), prepare (the contract layouts), or the embedded demo set.
# Each rule's output is the completion marker that the `mair data` command writes last and atomically, so a
# half-done step never looks finished and the files it already fetched survive a failure (downloads resume).


rule demo_data:
    """The embedded demo set, every dataset at tiny size (scope demo)."""
    output:
        targets.data_markers(DATA, ALL_DATASETS, "demo"),
    log:
        f"{RESULTS}/demo/logs/data/demo.log",
    params:
        data_dir=DATA,
    localrule: True
    shell:
        "mair data demo --data-dir {params.data_dir} > {log} 2>&1"


rule download:
    """Fetch, verify and extract one dataset (login/manual sets: place the files with `mair data add`)."""
    output:
        targets.extracted_marker(DATA, "{dataset}"),
    log:
        f"{RESULTS}/paper/logs/data/download_{{dataset}}.log",
    wildcard_constraints:
        dataset="|".join(DOWNLOADABLE),
    params:
        data_dir=DATA,
        mirror=f"--mirror {config['download']['mirror']} " if config["download"]["mirror"] else "",
        timeout=config["download"]["timeout"],
    retries: RETRIES["download"]
    localrule: SLURM["downloads_on_login_node"]
    resources:
        runtime=SLURM["data_runtime"],
        mem_mb=SLURM["data_mem_mb"],
        cpus_per_task=1,
        slurm_partition=SLURM["partition"],
        slurm_account=SLURM["account"],
        qos=SLURM["qos"],
    shell:
        "mair data download {wildcards.dataset} --data-dir {params.data_dir} {params.mirror}--timeout {params.timeout} "
        "> {log} 2>&1"


rule prepare:
    """Build data/prepared/<id>/ from the extracted files (derived sets: from the sets they merge)."""
    input:
        lambda wc: targets.prepare_inputs(DATA, wc.dataset),
    output:
        targets.prepared_marker(DATA, "{dataset}", "paper"),
    log:
        f"{RESULTS}/paper/logs/data/prepare_{{dataset}}.log",
    params:
        data_dir=DATA,
    retries: RETRIES["prepare"]
    threads: SLURM["data_cpus"]
    resources:
        runtime=SLURM["data_runtime"],
        mem_mb=SLURM["data_mem_mb"],
        slurm_partition=SLURM["partition"],
        slurm_account=SLURM["account"],
        qos=SLURM["qos"],
    shell:
        "mair data prepare {wildcards.dataset} --data-dir {params.data_dir} > {log} 2>&1"


rule data_manifest:
    """One JSON file listing the prepared sets of a scope with their image counts (what DVC records)."""
    input:
        lambda wc: targets.data_markers(DATA, targets.pipeline_datasets(EXPS, config), wc.scope),
    output:
        targets.manifest_file(RESULTS, "{scope}"),
    localrule: True
    shell:
        "python -m mair.pipeline data-manifest --out {output} {input}"
