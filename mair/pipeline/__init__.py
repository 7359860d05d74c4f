"""What the reproduction pipeline's drivers (Snakefile, workflow/rules/*.smk, dvc.yaml, SLURM jobs) ask of mair.

No step runs here: every step is a ``mair`` command. Loading is cheap (no torch, no cv2), because the Snakefile
imports these modules on every invocation.

* ``settings``: params/pipeline.yaml and ``--config``, typed and validated; the weight source.
* ``targets``: the experiments chosen and the files each rule reads and writes.
* ``gpus``: GPUs per job and ``run-with-gpus`` (cards of its own for each job on a shared machine).
* ``artifacts``: the data manifest, an experiment's metrics file, published weights linked into place.
* ``dvc``: dvc.yaml generated from the same lists.
* ``slurm``, ``jobstep``, ``snakemake_run``: SLURM as the pipeline meets it (memory per job kind, the accounting
  preflight, one attempt of a job with its signals and log) and Snakemake with the executor's profile for DVC.
* ``python -m mair.pipeline ACTION`` (``__main__``): the helper commands the rules run.
"""
