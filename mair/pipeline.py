"""Helpers of the reproduction pipeline (Snakefile, workflow/rules/*.smk, dvc.yaml); no step runs here.

* **Target lists**: which files the Snakemake rules produce for a scope and a set of experiments (data markers,
  weights, evaluation summaries, tables), and the inputs of each step. The rules only call the ``mair`` command;
  this module only names files.
* **GPU slots**: ``python -m mair.pipeline run-with-gpus N -- CMD ...`` gives CMD ``N`` cards of its own
  (``CUDA_VISIBLE_DEVICES``) on a machine shared by concurrent jobs. Cards are claimed with ``flock`` on
  per-card lock files, so a card is free again the moment its holder exits, even after ``kill -9``; the
  command is ``exec``-ed, so signals reach it directly (a preempted ``mair train`` checkpoints, exits 75).
* **dvc.yaml**: ``python -m mair.pipeline dvc-yaml [--check]`` writes (or checks) the DVC stages over the same
  commands from the same lists.
* **Data manifest**: ``python -m mair.pipeline data-manifest`` gathers the prepared markers of a scope into one
  JSON file (the output DVC records for the data step; data/ itself is tracked by data.dvc).
* **Published weights**: ``python -m mair.pipeline link-weights SRC DST`` puts a fetched checkpoint where the
  pipeline expects an experiment's weights (a hard link, else a copy).
* **Metrics**: ``python -m mair.pipeline eval-metrics`` gathers an experiment's evaluation summaries into one small
  JSON file (PSNR/SSIM per test set), the metrics DVC shows.

Loading is cheap (no torch, no cv2): the Snakefile imports this module on every invocation.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mair.data.paths import EXTRACTED_MARKER, PREPARED_MARKER

#: Snakemake per-task targets -> experiment ``task`` values (params/experiments/<id>.yaml).
TASK_TARGETS: dict[str, tuple[str, ...]] = {
    "reproduce_sr": ("sr_classic",),
    "reproduce_light_sr": ("sr_light",),
    "reproduce_denoising": ("dn_color",),
    "reproduce_real_denoising": ("dn_real",),
    "reproduce_deblurring": ("deblur",),
    "reproduce_dehazing": ("dehaze",),
}


class PipelineError(ValueError):
    """A pipeline setting that cannot work (the message says which and why)."""


# ------------------------------------------------------------------------------------------------ config


@functools.cache
def _schema(path: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def coerce_cli_config(config: dict[str, Any], schema_file: str | os.PathLike[str]) -> dict[str, Any]:
    """Give ``--config`` values nested in a mapping the types the schema asks for, in place.

    Snakemake types top-level ``--config KEY=VALUE`` values (int, float, bool, YAML) but leaves scalars inside a
    mapping as text: ``--config 'retries={train: 5}'`` arrives as ``{'train': '5'}``. A text value where the schema
    expects no text is read as YAML (``'5'`` -> 5, ``'true'`` -> True, ``'null'`` -> None).
    """
    import yaml

    def walk(node: Any, schema: Any) -> Any:
        if isinstance(node, dict) and isinstance(schema, dict):
            props = schema.get("properties") or {}
            for key, value in node.items():
                if key in props:
                    node[key] = walk(value, props[key])
            return node
        if isinstance(node, str) and isinstance(schema, dict):
            kinds = schema.get("type")
            kinds = [kinds] if isinstance(kinds, str) else (kinds or [])
            if kinds and "string" not in kinds:
                try:
                    return yaml.safe_load(node)
                except yaml.YAMLError:
                    return node
        return node

    schema = _schema(str(schema_file))
    for key, value in config.items():
        if isinstance(value, dict):
            walk(value, (schema.get("properties") or {}).get(key))
    return config


def config_error_message(text: str, schema_file: str | os.PathLike[str] | None = None) -> str:
    """One clear paragraph from Snakemake's config validation error (which embeds the whole schema).

    ``Error validating config file. ValidationError: 'papr' is not one of ['demo', 'paper'] ... On
    instance['scope']: ...`` becomes ``invalid pipeline config: scope: 'papr' is not one of ['demo', 'paper']``.
    """
    lines = text.splitlines()
    what = next((ln.split("ValidationError:", 1)[1].strip() for ln in lines if "ValidationError:" in ln), "")
    where = ""
    for ln in lines:
        match = re.match(r"\s*On instance((\[[^\]]*\])*):", ln)
        if match:
            where = ".".join(k.strip("'\"") for k in re.findall(r"\[([^\]]*)\]", match.group(1)))
    expected = ""
    if schema_file is not None and where:
        node: Any = _schema(str(schema_file))
        for key in where.split("."):
            node = (node.get("properties") or {}).get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("description"):
            expected = f" (expected: {node['description']})"
    return (
        f"invalid pipeline config: {where or '(top level)'}: {what or text.strip()}{expected}\n"
        "Settings: params/pipeline.yaml, overridden by --config KEY=VALUE; what each key accepts: "
        "workflow/schemas/config.schema.yaml (docs/pipeline.md)."
    )


# ------------------------------------------------------------------------------------------------ experiments


@functools.cache
def experiment(exp_id: str) -> dict[str, Any]:
    """The validated paper-scope experiment ``params/experiments/<exp_id>.yaml`` (cached)."""
    from mair.experiments import load_experiment

    return load_experiment(exp_id)


def all_experiments() -> list[str]:
    """Every experiment id, in paper order."""
    from mair.experiments import experiment_ids

    return experiment_ids()


def selected_experiments(config: Mapping[str, Any]) -> list[str]:
    """``config['experiments']`` (``all`` or a list of ids) in paper order; unknown ids are an error."""
    known = all_experiments()
    chosen = config.get("experiments", "all")
    if chosen == "all":
        return known
    if isinstance(chosen, str):
        chosen = [c for c in chosen.replace(",", " ").split() if c]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise PipelineError(f"config experiments: unknown id(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [k for k in known if k in chosen]


def experiments_of_tasks(tasks: Iterable[str], config: Mapping[str, Any]) -> list[str]:
    """Selected experiments whose ``task`` is one of ``tasks``."""
    wanted = set(tasks)
    return [e for e in selected_experiments(config) if experiment(e)["task"] in wanted]


def init_experiment(exp_id: str, config: Mapping[str, Any]) -> str | None:
    """The experiment whose weights initialise ``exp_id`` (None: from scratch).

    An ``init_from.quirk`` (the official MaIR-T x3 yml loads the MaIR-S x2 checkpoint) follows
    ``config['init_quirk']``: ``official`` (default) keeps the official choice, ``fixed`` takes the corrected one.
    """
    init = experiment(exp_id)["train"]["init_from"]
    if init is None:
        return None
    quirk = init.get("quirk")
    if quirk is None:
        return init["experiment"]
    return quirk[config.get("init_quirk") or quirk["default"]]


def init_candidates(exp_id: str) -> list[str]:
    """Every experiment ``exp_id`` may start from, whichever ``init_quirk`` is chosen (DVC orders by all)."""
    init = experiment(exp_id)["train"]["init_from"]
    if init is None:
        return []
    quirk = init.get("quirk")
    choices = [init["experiment"]] + ([quirk["official"], quirk["fixed"]] if quirk else [])
    return list(dict.fromkeys(choices))


def init_override(exp_id: str, config: Mapping[str, Any]) -> str | None:
    """The init experiment when it differs from the experiment file's own choice, else None."""
    chosen = init_experiment(exp_id, config)
    init = experiment(exp_id)["train"]["init_from"]
    return chosen if init is not None and chosen != init["experiment"] else None


def train_datasets(exp_id: str) -> list[str]:
    """Datasets a training reads: its training sets and its validation set."""
    exp = experiment(exp_id)
    ids = [d["id"] for d in exp["train"]["datasets"]]
    val = (exp.get("val") or {}).get("dataset")
    if val:
        ids.append(val["id"])
    return list(dict.fromkeys(ids))


def test_datasets(exp_id: str) -> list[str]:
    """The paper's test sets of an experiment."""
    return [d["id"] for d in experiment(exp_id)["test"]["datasets"]]


def variants(exp_id: str, config: Mapping[str, Any]) -> list[str]:
    """Evaluation variants as file suffixes: ``""`` (MaIR) and ``"+"`` (MaIR+, 8x self-ensemble).

    ``config['self_ensemble']``: ``reported`` (default: MaIR+ where the paper reports it), ``all`` or ``none``.
    """
    mode = config.get("self_ensemble", "reported")
    reported = bool(experiment(exp_id)["test"].get("self_ensemble_reported"))
    return ["", "+"] if mode == "all" or (mode == "reported" and reported) else [""]


def needed_datasets(exps: Iterable[str]) -> list[str]:
    """Every dataset the experiments train, validate or test on (first use order)."""
    out: list[str] = []
    for e in exps:
        out += train_datasets(e) + test_datasets(e)
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------------ data files


@functools.cache
def catalog() -> Any:
    """The dataset catalog params/datasets.yaml (validated, cached)."""
    from mair.data.catalog import load_catalog

    return load_catalog()


def downloads(datasets: Iterable[str]) -> list[str]:
    """The catalog datasets to download for ``datasets`` (derived sets replaced by their sources)."""
    return catalog().expand(list(datasets))


def prepared_marker(data_dir: str, dataset: str, scope: str) -> str:
    """``<data>/prepared/<id>/.prepared.json`` (paper) or ``<data>/demo/prepared/<id>/.prepared.json`` (demo)."""
    base = f"{data_dir}/prepared" if scope == "paper" else f"{data_dir}/demo/prepared"
    return f"{base}/{dataset}/{PREPARED_MARKER}"


def extracted_marker(data_dir: str, dataset: str) -> str:
    """``<data>/extracted/<id>/.extracted.json``: written last by ``mair data download`` (after extraction)."""
    return f"{data_dir}/extracted/{dataset}/{EXTRACTED_MARKER}"


def prepare_inputs(data_dir: str, dataset: str) -> list[str]:
    """What ``mair data prepare <id>`` reads: its extracted files, or the prepared sets a derived set merges."""
    ds = catalog().get(dataset)
    if ds.is_derived:
        return [prepared_marker(data_dir, d, "paper") for d in ds.derived_from]
    return [extracted_marker(data_dir, dataset)]


def data_markers(data_dir: str, datasets: Iterable[str], scope: str) -> list[str]:
    return [prepared_marker(data_dir, d, scope) for d in datasets]


# ------------------------------------------------------------------------------------------------ result files


def weights_file(results_dir: str, scope: str, exp_id: str) -> str:
    return f"{results_dir}/{scope}/weights/{exp_id}.pth"


def eval_file(results_dir: str, scope: str, exp_id: str, dataset: str, variant: str = "") -> str:
    """The summary ``results/<weights>/<scope>/eval/<exp>/<dataset>[+].json`` that ``mair evaluate`` writes last."""
    return f"{results_dir}/{scope}/eval/{exp_id}/{dataset}{variant}.json"


def eval_files(results_dir: str, scope: str, exp_id: str, config: Mapping[str, Any]) -> list[str]:
    """The summaries of every test set and variant of an experiment."""
    return [
        eval_file(results_dir, scope, exp_id, d, v) for v in variants(exp_id, config) for d in test_datasets(exp_id)
    ]


def table_files(results_dir: str, scope: str) -> list[str]:
    """What the tables rule declares: ``tables.md`` and ``tables.tex`` are written last by ``mair tables``."""
    return [f"{results_dir}/{scope}/tables/tables.tex", f"{results_dir}/{scope}/tables/tables.md"]


def manifest_file(results_dir: str, scope: str) -> str:
    return f"{results_dir}/{scope}/data/manifest.json"


# ------------------------------------------------------------------------------------------------ published weights
# `weights: published` evaluates the authors' checkpoints instead of training: no training job, one job fetching
# the files (`mair weights download`). Every run writes under <results_dir>/<weights>/ (results/trained/ or
# results/published/), so that the results of the two weight sources never mix and DVC names both folders with
# the same parameter (dvc.yaml's paths are templated with ${weights}).

WEIGHTS_MODES: tuple[str, ...] = ("trained", "published")


def weights_mode(config: Mapping[str, Any]) -> str:
    """``config['weights']``: ``trained`` (default: train, then evaluate) or ``published`` (the authors' files)."""
    mode = config.get("weights") or "trained"
    if mode not in WEIGHTS_MODES:
        raise PipelineError(f"config weights: expected one of {', '.join(WEIGHTS_MODES)}, got {mode!r}")
    return str(mode)


def results_root(results_dir: str, config: Mapping[str, Any]) -> str:
    """Where a run writes: ``<results_dir>/trained`` or ``<results_dir>/published`` (the ``weights`` setting)."""
    return f"{results_dir.rstrip('/')}/{weights_mode(config)}"


@functools.cache
def weights_catalog() -> Any:
    """The published checkpoints' catalog params/weights.yaml (validated, cached)."""
    from mair.weights.catalog import load_weights_catalog

    return load_weights_catalog()


def published_weights_file(data_dir: str, scope: str, exp_id: str) -> str:
    """``<data>/weights/published/<file>`` (paper) or ``<data>/demo/weights/published/<file>`` (demo)."""
    base = f"{data_dir}/weights/published" if scope == "paper" else f"{data_dir}/demo/weights/published"
    return f"{base}/{weights_catalog().get(exp_id).file}"


def published_manifest(results: str, scope: str) -> str:
    """What the fetch job writes last: ``<results>/<scope>/weights/published.json`` (files and sha256)."""
    return f"{results}/{scope}/weights/published.json"


def eval_weights_input(results: str, scope: str, exp_id: str, config: Mapping[str, Any]) -> str:
    """The file an evaluation waits for: ``<results>/<scope>/weights/<exp>.pth``, trained or published (a link to
    the fetched file, written by the ``published_weights`` rule: one file per experiment for both sources)."""
    return weights_file(results, scope, exp_id)


def eval_weights_path(results: str, data_dir: str, scope: str, exp_id: str, config: Mapping[str, Any]) -> str:
    """The weights file an evaluation loads: the trained one, or the published file under the data root (its
    official name stays in the evaluation summaries)."""
    if weights_mode(config) == "published":
        return published_weights_file(data_dir, scope, exp_id)
    return weights_file(results, scope, exp_id)


def link_weights(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` as a hard link (no second copy of a large file), else a copy; atomically, and
    with the modification time of now, so that the file is newer than what it was made from."""
    from mair.atomic import temp_name

    if not source.is_file():
        raise PipelineError(f"link-weights: {source} is no file (fetch it first: mair weights download)")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = temp_name(target.parent, f".{target.name}.", ".part")
    try:
        try:
            os.link(source, part)
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(source, part)
        os.utime(part)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def pipeline_datasets(exps: Iterable[str], config: Mapping[str, Any]) -> list[str]:
    """Datasets a run needs: everything the experiments use, or only their test sets for published weights."""
    if weights_mode(config) == "published":
        return list(dict.fromkeys(d for e in exps for d in test_datasets(e)))
    return needed_datasets(exps)


# ------------------------------------------------------------------------------------------------ GPUs


def train_gpus(exp_id: str, scope: str, config: Mapping[str, Any]) -> int:
    """GPUs a training asks for: paper scope ``train_gpus`` or the experiment's ``paper_gpus``; demo ``demo_gpus``."""
    if scope == "demo":
        return int(config.get("demo_gpus") or 0)
    override = config.get("train_gpus")
    return int(override) if override is not None else int(experiment(exp_id)["paper_gpus"])


def eval_gpus(scope: str, config: Mapping[str, Any]) -> int:
    """GPUs an evaluation asks for: ``eval_gpus`` (paper) or ``demo_gpus`` (demo)."""
    key = "demo_gpus" if scope == "demo" else "eval_gpus"
    return int(config.get(key) or 0)


def detect_gpu_ids(env: Mapping[str, str] | None = None) -> list[str]:
    """The cards this process may use: ``$MAIR_GPU_IDS``, else ``$CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``."""
    env = os.environ if env is None else env
    for key in ("MAIR_GPU_IDS", "CUDA_VISIBLE_DEVICES"):
        value = env.get(key)
        if value is not None:
            return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(x for x in out.splitlines() if x.startswith("GPU "))]


def local_gpu_limit(config: Mapping[str, Any]) -> int | None:
    """The GPU limit of a local run from ``config['local_gpus']``, or None for no limit.

    ``auto`` (default) counts the cards of this machine and gives no limit where there are none (a CPU machine or
    a cluster's login node: GPU jobs then fail with a clear message locally, and SLURM gives them their cards);
    ``none`` never limits; a number is the limit.
    """
    value = config.get("local_gpus", "auto")
    if value is None or value == "none":
        return None
    if value == "auto":
        return len(detect_gpu_ids()) or None
    return int(value)


def default_lock_dir() -> Path:
    """Machine-local folder of the card locks: ``$MAIR_GPU_LOCK_DIR`` or ``<tmp>/mair-gpu-slots-<uid>``."""
    env = os.environ.get("MAIR_GPU_LOCK_DIR")
    if env:
        return Path(env)
    import tempfile

    return Path(tempfile.gettempdir()) / f"mair-gpu-slots-{os.getuid()}"


def _lock(path: Path, blocking: bool) -> int | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _slot_name(gpu_id: str) -> str:
    return "gpu-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in gpu_id) + ".lock"


def try_claim(n: int, gpu_ids: Sequence[str], lock_dir: Path) -> list[tuple[str, int]] | None:
    """Claim ``n`` free cards at once (all or none): ``[(gpu_id, fd), ...]``, or None when too few are free.

    The scan runs under a folder-wide lock so that two jobs never each take half of what both need.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    guard = _lock(lock_dir / "allocator.lock", blocking=True)
    assert guard is not None
    claimed: list[tuple[str, int]] = []
    try:
        for gpu_id in gpu_ids:
            fd = _lock(lock_dir / _slot_name(gpu_id), blocking=False)
            if fd is not None:
                claimed.append((gpu_id, fd))
                if len(claimed) == n:
                    break
        if len(claimed) < n:
            for _, fd in claimed:
                os.close(fd)
            return None
        for gpu_id, fd in claimed:  # who holds it, for people looking at the lock folder
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"gpu {gpu_id} pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
        return claimed
    finally:
        os.close(guard)


def claim_gpus(
    n: int,
    gpu_ids: Sequence[str],
    lock_dir: Path,
    timeout: float | None = None,
    poll: float = 1.0,
    log: Any = None,
) -> list[tuple[str, int]]:
    """Wait until ``n`` of ``gpu_ids`` are free and claim them; TimeoutError after ``timeout`` seconds."""
    if n > len(gpu_ids):
        raise PipelineError(
            f"this job needs {n} GPU(s) but this machine shows {len(gpu_ids)} ({','.join(gpu_ids) or 'none'}). "
            f"Cap the jobs at the machine's cards with `--resources gpu={len(gpu_ids)}` or "
            "`--profile workflow/profiles/local` (Snakemake then scales a job's GPUs down and mair train keeps "
            "the paper's effective batch), or run on SLURM (--profile workflow/profiles/slurm)."
        )
    start = time.monotonic()
    said = False
    while True:
        claimed = try_claim(n, gpu_ids, lock_dir)
        if claimed is not None:
            return claimed
        if timeout is not None and time.monotonic() - start >= timeout:
            raise TimeoutError(f"no {n} free GPU(s) among {','.join(gpu_ids)} after {timeout:.0f} s")
        if not said and log is not None:
            log(f"waiting for {n} free GPU(s) among {','.join(gpu_ids)} (locks in {lock_dir})")
            said = True
        time.sleep(poll * (0.5 + random.random()))


def run_with_gpus(
    n: int,
    command: Sequence[str],
    lock_dir: Path | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Claim ``n`` cards, set ``CUDA_VISIBLE_DEVICES`` to them and ``exec`` ``command`` (never returns on success).

    ``n == 0`` hides every card (CPU). Inside a SLURM job the cards SLURM gave the job are used as they are (SLURM
    already keeps jobs apart). The card locks are inherited by the command and released when it exits.
    """
    if not command:
        raise PipelineError("run-with-gpus: no command given (write it after `--`)")
    env = dict(os.environ if env is None else env)
    fds: list[int] = []
    if n <= 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif env.get("SLURM_JOB_ID") and env.get("CUDA_VISIBLE_DEVICES") is not None:
        ids = detect_gpu_ids(env)
        if n > len(ids):
            raise PipelineError(f"this SLURM job was given {len(ids)} GPU(s) ({','.join(ids)}), the step needs {n}")
        env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:n])
    else:
        claimed = claim_gpus(
            n,
            detect_gpu_ids(env),
            lock_dir or default_lock_dir(),
            timeout=timeout,
            log=lambda m: print(f"run-with-gpus: {m}", file=sys.stderr, flush=True),
        )
        env["CUDA_VISIBLE_DEVICES"] = ",".join(g for g, _ in claimed)
        fds = [fd for _, fd in claimed]
    for fd in fds:
        os.set_inheritable(fd, True)
    env.pop("MAIR_GPU_IDS", None)  # the command sees only its own cards
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as error:
        for fd in fds:
            os.close(fd)
        raise PipelineError(f"run-with-gpus: cannot run {command[0]!r}: {error}") from error
    return 127  # pragma: no cover - execvpe does not return


# ------------------------------------------------------------------------------------------------ data manifest


def write_manifest(out: Path, markers: Sequence[str]) -> dict[str, Any]:
    """Gather prepared markers (``.../<id>/.prepared.json``) into ``out`` atomically; return the document."""
    from mair.atomic import atomic_write_json

    datasets: dict[str, Any] = {}
    for marker in sorted(markers):
        path = Path(marker)
        doc = json.loads(path.read_text(encoding="utf-8"))
        datasets[path.parent.name] = {k: doc[k] for k in ("scope", "counts", "total") if k in doc}
    manifest = {"datasets": datasets}
    atomic_write_json(out, manifest)
    return manifest


def write_eval_metrics(out: Path, summaries: Sequence[str]) -> dict[str, Any]:
    """Gather evaluation summaries (``.../<dataset>[+].json``) into ``{"<dataset>[+]": {"psnr", "ssim"}}`` at
    ``out``, atomically: the compact metrics DVC shows (``dvc metrics show``, ``dvc exp show``)."""
    from mair.atomic import atomic_write_json

    metrics: dict[str, Any] = {}
    for summary in sorted(summaries):
        doc = json.loads(Path(summary).read_text(encoding="utf-8"))
        values = {k: v for k, v in (doc.get("metrics") or {}).items() if isinstance(v, int | float)}
        if values:
            metrics[Path(summary).stem] = values
    atomic_write_json(out, metrics)
    return metrics


# ------------------------------------------------------------------------------------------------ dvc.yaml

DVC_HEADER = """\
# DVC stages of the MaIR reproduction: coarse steps (data, the weights of each experiment, one evaluation per
# experiment, tables), each running the Snakemake rule of that step, so both tools run the same `mair` commands.
# GENERATED by `python -m mair.pipeline dvc-yaml` from params/; do not edit by hand (tests/test_dvc.py checks
# that it is up to date and that it describes the same steps as the Snakemake DAG).
# Settings come from params/pipeline.yaml (vars): `dvc repro` runs the demo with trained weights; the paper scope:
# `dvc exp run -S params/pipeline.yaml:scope=paper`; the authors' checkpoints instead of training:
# `dvc exp run -S params/pipeline.yaml:weights=published` (the weights_<exp> stages then fetch, not train).
# Every path is <results_dir>/<weights>/<scope>/..., so the two weight sources never share a file.
# --allowed-rules keeps each stage to its own step; DVC orders the stages by their deps and outs.
# `experiments` (params/pipeline.yaml) chooses the experiments the data and tables stages work for: their commands
# read it from the file, e.g. `dvc exp run -S 'params/pipeline.yaml:experiments=[dehaze_r6k]' evaluate_dehaze_r6k`.
# Metrics: results/<weights>/<scope>/metrics/<exp>.json (PSNR/SSIM per test set); plots: the training logs.
"""

#: Snakemake command of a DVC stage: only ``rules`` may run, up-to-date checks by modification time only.
#: ``mair.snakemake_run`` adds the profile that ``executor`` in params/pipeline.yaml names (local or slurm).
DVC_SNAKEMAKE = "python -m mair.snakemake_run --rerun-triggers mtime --allowed-rules {rules} {config}-- {targets}"

#: The Snakemake rules behind each kind of DVC stage (evaluation rules are per experiment, see evaluate.smk).
#: A weights stage trains (weights: trained) or fetches and links the authors' file (weights: published):
#: Snakemake reads ``weights`` from params/pipeline.yaml and plans only the rules of that source.
DVC_STAGE_RULES: dict[str, tuple[str, ...]] = {
    "data": ("demo_data", "download", "prepare", "data_manifest"),
    "weights": ("train", "fetch_weights", "published_weights"),
    "evaluate": ("evaluate_{exp}", "evaluate_plus_{exp}", "eval_metrics"),
    "tables": ("tables",),
}


def _dvc_cmd(kind: str, targets: str, experiments: str | None = None) -> str:
    """The stage command; ``experiments`` narrows an evaluation stage to its experiment. Without it Snakemake reads
    ``experiments`` from params/pipeline.yaml, the file ``dvc exp run -S`` edits (no ``--config`` override)."""
    config = f"--config 'experiments=[{experiments}]' " if experiments else ""
    rules = " ".join(r.format(exp=experiments) for r in DVC_STAGE_RULES[kind])
    return DVC_SNAKEMAKE.format(rules=rules, config=config, targets=targets)


#: The settings of params/pipeline.yaml that DVC tracks as params (``dvc exp show`` columns), per stage kind.
#: Experiment files are plain dependencies: any change reruns their stages, without one column per key.
DVC_PARAMS: dict[str, tuple[str, ...]] = {
    "data": ("scope", "experiments", "weights", "data_dir"),
    "weights": ("weights", "init_quirk", "precision"),
    "evaluate": ("self_ensemble", "precision"),
    "tables": ("experiments",),
}


def _dvc_params(kind: str) -> list[dict[str, list[str]]]:
    return [{"params/pipeline.yaml": list(DVC_PARAMS[kind])}]


def metrics_file(results_dir: str, scope: str, exp_id: str) -> str:
    """``results/<weights>/<scope>/metrics/<exp>.json``: PSNR/SSIM of every test set and variant (DVC's metrics)."""
    return f"{results_dir}/{scope}/metrics/{exp_id}.json"


def dvc_plots(exps: Sequence[str]) -> list[dict[str, Any]]:
    """dvc.yaml's top-level ``plots``: training loss and validation PSNR over iterations, one line per experiment
    (``runs/<scope>/<exp>/train_log.csv`` and ``val_log.csv``, docs/contracts.md "Training logs")."""

    def lines(log: str, column: str) -> dict[str, str]:
        return {f"${{runs_dir}}/${{scope}}/{e}/{log}": column for e in exps}

    return [
        {
            "training loss": {
                "x": "iter",
                "y": lines("train_log.csv", "loss"),
                "x_label": "iteration",
                "y_label": "loss (L1)",
                "template": "linear",
            }
        },
        {
            "validation PSNR": {
                "x": "iter",
                "y": lines("val_log.csv", "psnr"),
                "x_label": "iteration",
                "y_label": "PSNR (dB)",
                "template": "linear",
            }
        },
    ]


#: The results root of dvc.yaml's paths: :func:`results_root` in DVC's templating (vars of params/pipeline.yaml).
DVC_RESULTS = "${results_dir}/${weights}"


def dvc_stages(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``stages`` mapping of dvc.yaml: data, ``weights_<exp>``, ``evaluate_<exp>`` and tables.

    Paths use DVC's ``${results_dir}``, ``${weights}``, ``${scope}`` (vars from params/pipeline.yaml), so one
    dvc.yaml serves both weight sources. The training run folders (runs/<scope>/<exp>, checkpoints and logs) are
    no output: DVC never deletes them, so an interrupted training resumes, and a published run has none.
    """
    exps = selected_experiments(config)
    res, scope = DVC_RESULTS, "${scope}"
    manifest = manifest_file(res, scope)

    stages: dict[str, Any] = {
        "data": {
            "cmd": _dvc_cmd("data", "prepare_all"),
            "deps": ["params/datasets.yaml", "mair/data"],
            "params": _dvc_params("data"),
            "outs": [manifest],
        }
    }
    for e in exps:
        stages[f"weights_{e}"] = {
            "cmd": _dvc_cmd("weights", weights_file(res, scope, e)),
            "deps": [
                manifest,
                *[weights_file(res, scope, i) for i in init_candidates(e)],
                f"params/experiments/{e}.yaml",
                "mair/train",
                "mair/models",
            ],
            "params": _dvc_params("weights"),
            "outs": [weights_file(res, scope, e)],
        }
    for e in exps:
        stages[f"evaluate_{e}"] = {
            "cmd": _dvc_cmd("evaluate", "evaluate_all", experiments=e),
            "deps": [
                weights_file(res, scope, e),
                manifest,
                f"params/experiments/{e}.yaml",
                "mair/evaluate",
                "mair/models",
            ],
            "params": _dvc_params("evaluate"),
            "outs": [f"{res}/{scope}/eval/{e}"],
            "metrics": [{metrics_file(res, scope, e): {"cache": False}}],
        }
    stages["tables"] = {
        "cmd": _dvc_cmd("tables", "reproduce_tables"),
        "deps": [f"{res}/{scope}/eval/{e}" for e in exps] + ["mair/report", "params/paper_results.csv"],
        "params": _dvc_params("tables"),
        "outs": [f"{res}/{scope}/tables"],
    }
    return stages


def dvc_yaml_text(config: Mapping[str, Any]) -> str:
    import yaml

    doc = {
        "vars": ["params/pipeline.yaml"],
        "stages": dvc_stages(config),
        "plots": dvc_plots(selected_experiments(config)),
    }
    body = yaml.safe_dump(doc, sort_keys=False, width=110, default_flow_style=False)
    # `- params/experiments/x.yaml:` (every key of the file) reads better than `...: null`.
    body = body.replace(": null\n", ":\n")
    return DVC_HEADER + body


def load_pipeline_config(path: str | os.PathLike[str] = "params/pipeline.yaml") -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


# ------------------------------------------------------------------------------------------------ command line


def _cmd_run_with_gpus(args: argparse.Namespace) -> int:
    try:
        return run_with_gpus(args.n, args.command, Path(args.lock_dir) if args.lock_dir else None, args.timeout)
    except (PipelineError, TimeoutError) as error:
        print(f"run-with-gpus: error: {error}", file=sys.stderr)
        return 2


def _cmd_dvc_yaml(args: argparse.Namespace) -> int:
    config = load_pipeline_config(args.config)
    config = {**config, "experiments": "all"}  # dvc.yaml always holds every experiment
    text = dvc_yaml_text(config)
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        if current != text:
            print(f"{out} is out of date: run `python -m mair.pipeline dvc-yaml`", file=sys.stderr)
            return 1
        return 0
    from mair.atomic import atomic_write_text

    atomic_write_text(out, text)
    print(f"wrote {out} ({len(dvc_stages(config))} stages)")
    return 0


def _cmd_link_weights(args: argparse.Namespace) -> int:
    try:
        link_weights(Path(args.source), Path(args.target))
    except (PipelineError, OSError) as error:
        print(f"python -m mair.pipeline link-weights: error: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_eval_metrics(args: argparse.Namespace) -> int:
    doc = write_eval_metrics(Path(args.out), args.summaries)
    print(f"wrote {args.out} ({len(doc)} test sets)")
    return 0


def _cmd_data_manifest(args: argparse.Namespace) -> int:
    doc = write_manifest(Path(args.out), args.markers)
    print(f"wrote {args.out} ({len(doc['datasets'])} datasets)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mair.pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)

    p = sub.add_parser(
        "run-with-gpus",
        help="run a command on N cards of its own (CUDA_VISIBLE_DEVICES)",
        usage="python -m mair.pipeline run-with-gpus [--lock-dir DIR] [--timeout S] N -- COMMAND ...",
    )
    p.add_argument("n", type=int, metavar="N", help="number of cards (0: none, CPU only)")
    p.add_argument("--lock-dir", help="card lock folder (default: $MAIR_GPU_LOCK_DIR or <tmp>/mair-gpu-slots-<uid>)")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds of waiting")
    p.set_defaults(handler=_cmd_run_with_gpus)

    p = sub.add_parser("dvc-yaml", help="write dvc.yaml from the experiments (or --check it)")
    p.add_argument("--config", default="params/pipeline.yaml", help="pipeline config (default: %(default)s)")
    p.add_argument("--out", default="dvc.yaml", help="output file (default: %(default)s)")
    p.add_argument("--check", action="store_true", help="exit 1 when the file differs from what would be written")
    p.set_defaults(handler=_cmd_dvc_yaml)

    p = sub.add_parser("data-manifest", help="gather prepared markers into one JSON file")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("markers", nargs="+", help="prepared markers (.../<id>/.prepared.json)")
    p.set_defaults(handler=_cmd_data_manifest)

    p = sub.add_parser("link-weights", help="hard-link (else copy) a weights file into place, atomically")
    p.add_argument("source", help="the fetched file")
    p.add_argument("target", help="where the pipeline expects it")
    p.set_defaults(handler=_cmd_link_weights)

    p = sub.add_parser("eval-metrics", help="gather evaluation summaries into one metrics JSON file (DVC metrics)")
    p.add_argument("--out", required=True, help="output JSON file")
    p.add_argument("summaries", nargs="+", help="evaluation summaries (.../<dataset>[+].json)")
    p.set_defaults(handler=_cmd_eval_metrics)

    argv = list(sys.argv[1:] if argv is None else argv)
    # `run-with-gpus [options] N -- COMMAND ...`: everything after the first `--` is the command, untouched.
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.command = command
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
