# Tables: every paper table from the evaluation summaries, beside the published numbers (results/<weights>/<scope>/tables/;
# demo-scope tables say so). tables.tex and tables.md are written last.


rule tables:
    input:
        lambda wc: [f for e in EXPS for f in targets.eval_files(RESULTS, wc.scope, e, config)],
    output:
        targets.table_files(RESULTS, "{scope}"),
    log:
        f"{RESULTS}/{{scope}}/logs/tables.log",
    params:
        results_dir=RESULTS,
        runs_dir=RUNS,
        weights=WEIGHTS,
        env=MLFLOW_ENV,
    localrule: True
    shell:
        "{params.env}mair tables --scope {wildcards.scope} --results-dir {params.results_dir} "
        "--runs-dir {params.runs_dir} --weights {params.weights} --log-mlflow > {log} 2>&1"
