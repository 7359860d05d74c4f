# Published weights (weights: published): one job fetches the authors' checkpoints of the selected experiments
# with `mair weights download` (from $MAIR_WEIGHTS_MIRROR, else the authors' Google Drive folder; each file
# verified, recorded in data.lock.json and checked against its network). The files live under the data root and
# are no declared output, so Snakemake never deletes them; the output is the record written last. When Drive
# refuses, the job stops with instructions (download by hand, `mair weights add ID --from PATH`, rerun).
# Then each experiment's file is linked to <results>/<scope>/weights/<exp>.pth (rule published_weights), the path
# where trained weights would be: evaluations and DVC's weights_<exp> stages wait for it whatever the source.


rule fetch_weights:
    output:
        targets.published_manifest(RESULTS, "{scope}"),
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


if WEIGHTS == "published":  # with trained weights, the rule train makes this file

    rule published_weights:
        input:
            # the fetch job's record orders the jobs; it is rewritten by every fetch, which changes no file here
            ancient(targets.published_manifest(RESULTS, "{scope}")),
        output:
            targets.weights_file(RESULTS, "{scope}", "{exp}"),
        log:
            f"{RESULTS}/{{scope}}/logs/published_weights/{{exp}}.log",
        params:
            data_dir=DATA,
            source=lambda wc: targets.published_weights_file(DATA, wc.scope, wc.exp),
            timeout=config["download"]["timeout"],
        retries: RETRIES["download"]
        localrule: True
        shell:
            # download checks the file (its recorded checksum) and fetches it if an earlier fetch did not
            "(mair weights download {wildcards.exp} --scope {wildcards.scope} --data-dir {params.data_dir} "
            "--timeout {params.timeout} --quiet && "
            "python -m mair.pipeline link-weights {params.source} {output}) > {log} 2>&1"
