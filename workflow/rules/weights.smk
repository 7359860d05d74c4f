# Published weights (weights: published): one job fetches the authors' checkpoints of the selected experiments
# with `mair weights download` (from $MAIR_WEIGHTS_MIRROR, else the authors' Google Drive folder; each file
# verified, recorded in data.lock.json and checked against its network). The files live under the data root and
# are no declared output, so Snakemake never deletes them; the output is the record written last. When Drive
# refuses, the job stops with instructions (download by hand, `mair weights add ID --from PATH`, rerun).


rule fetch_weights:
    output:
        P.published_manifest(RESULTS, "{scope}"),
    log:
        f"{RESULTS}/{{scope}}/logs/fetch_weights.log",
    params:
        ids=" ".join(EXPS),
        data_dir=DATA,
        timeout=config["download"]["timeout"],
    retries: RETRIES["download"]
    localrule: True
    shell:
        "mair weights download {params.ids} --scope {wildcards.scope} --data-dir {params.data_dir} "
        "--timeout {params.timeout} --manifest {output} --quiet > {log} 2>&1"
