"""The files the Snakemake rules and DVC stages produce and read, and the experiment queries behind them.

The rules only call the ``mair`` command; this module only names files. Every run writes under
``<results_dir>/<weights>/<scope>/`` (``results/trained/`` or ``results/published/``), so that the results of the
two weight sources never mix and DVC names both folders with the same parameter (dvc.yaml's paths are templated
with ``${weights}``). With ``weights: published`` no training runs: one job fetches the authors' files.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mair.data.paths import EXTRACTED_MARKER, PREPARED_MARKER
from mair.pipeline.settings import PipelineError, weights_mode

if TYPE_CHECKING:
    from mair.experiments import Experiment


@functools.cache
def experiment(exp_id: str) -> Experiment:
    """The validated paper-scope experiment ``params/experiments/<exp_id>.yaml`` (cached)."""
    from mair.experiments import load

    return load(exp_id)


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
    return [e for e in selected_experiments(config) if experiment(e).task in wanted]


def init_experiment(exp_id: str, config: Mapping[str, Any]) -> str | None:
    """The experiment whose weights initialise ``exp_id`` (None: from scratch).

    An ``init_from.quirk`` (the official MaIR-T x3 yml loads the MaIR-S x2 checkpoint) follows
    ``config['init_quirk']``: ``official`` (default) keeps the official choice, ``fixed`` takes the corrected one.
    """
    init = experiment(exp_id).train.init_from
    if init is None:
        return None
    if init.quirk is None:
        return init.experiment
    return init.quirk.chosen(config.get("init_quirk"))


def init_candidates(exp_id: str) -> list[str]:
    """Every experiment ``exp_id`` may start from, whichever ``init_quirk`` is chosen (DVC orders by all)."""
    init = experiment(exp_id).train.init_from
    if init is None:
        return []
    quirk = init.quirk
    choices = [init.experiment] + ([quirk.official, quirk.fixed] if quirk else [])
    return list(dict.fromkeys(choices))


def init_override(exp_id: str, config: Mapping[str, Any]) -> str | None:
    """The init experiment when it differs from the experiment file's own choice, else None."""
    chosen = init_experiment(exp_id, config)
    init = experiment(exp_id).train.init_from
    return chosen if init is not None and chosen != init.experiment else None


def train_datasets(exp_id: str) -> list[str]:
    """Datasets a training reads: its training sets and its validation set."""
    exp = experiment(exp_id)
    ids = [d.id for d in exp.train.datasets] + [exp.val.dataset.id]
    return list(dict.fromkeys(ids))


def test_datasets(exp_id: str) -> list[str]:
    """The paper's test sets of an experiment."""
    return [d.id for d in experiment(exp_id).test.datasets]


def variants(exp_id: str, config: Mapping[str, Any]) -> list[str]:
    """Evaluation variants as file suffixes: ``""`` (MaIR) and ``"+"`` (MaIR+, 8x self-ensemble).

    ``config['self_ensemble']``: ``reported`` (default: MaIR+ where the paper reports it), ``all`` or ``none``.
    """
    mode = config.get("self_ensemble", "reported")
    reported = experiment(exp_id).test.self_ensemble_reported
    return ["", "+"] if mode == "all" or (mode == "reported" and reported) else [""]


def needed_datasets(exps: Iterable[str]) -> list[str]:
    """Every dataset the experiments train, validate or test on (first use order)."""
    out: list[str] = []
    for e in exps:
        out += train_datasets(e) + test_datasets(e)
    return list(dict.fromkeys(out))


def pipeline_datasets(exps: Iterable[str], config: Mapping[str, Any]) -> list[str]:
    """Datasets a run needs: everything the experiments use, or only their test sets for published weights."""
    if weights_mode(config) == "published":
        return list(dict.fromkeys(d for e in exps for d in test_datasets(e)))
    return needed_datasets(exps)


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


def metrics_file(results_dir: str, scope: str, exp_id: str) -> str:
    """``results/<weights>/<scope>/metrics/<exp>.json``: PSNR/SSIM of every test set and variant (DVC's metrics)."""
    return f"{results_dir}/{scope}/metrics/{exp_id}.json"


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
