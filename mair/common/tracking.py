"""MLflow tracking for training and evaluation; the only module of mair that knows MLflow's API.

* The store is ``$MLFLOW_TRACKING_URI`` or, by default, ``sqlite:///mlflow.db`` in the working directory.
  For a SQLite store the artifacts of new MLflow experiments go to ``mlartifacts/`` beside the database file.
* MLflow never stops a training or an evaluation: every call is guarded. A locked SQLite database (several
  processes logging at once) is retried with back-off for up to ``lock_timeout`` seconds; any other failure
  (unreachable server, broken store, missing mlflow package) warns once with :class:`TrackingWarning` and
  turns the tracker off for the rest of the process. The run's own files stay the record.
* An HTTP store is probed with a short TCP connection first, so an unreachable server costs seconds, not
  MLflow's minutes of HTTP retries.
* MLflow experiments are named ``mair/<scope>/<experiment>``; training runs and evaluation runs of one paper
  experiment land in the same MLflow experiment. They are tagged as model-training experiments
  (``mlflow.experimentKind``), and every run carries MLflow's standard source, commit and user tags.
* A finished training logs its final weights as an MLflow logged model (the weights-only ``{'params': ...}`` file
  and the run's config; load it with ``mair``, never with pickle). An evaluation run whose weights are those of a
  training run (same SHA-256) becomes a child of that run (``mlflow.parentRunId``) and logs its metrics to the model.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import hashlib
import os
import random
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

__all__ = [
    "DEFAULT_TRACKING_URI",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "Tracker",
    "TrackingWarning",
    "eval_summaries",
    "flatten_params",
    "log_evaluation",
    "log_tables",
    "mlflow_experiment_name",
    "source_tags",
    "tracking_uri",
]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_MAX_PARAM_VALUE = 6000
_BATCH = 100  # MLflow accepts at most 100 params / 1000 metrics per log_batch call

T = TypeVar("T")

#: The experiment tag MLflow 3 keeps an experiment's type in, and the value for model training (MLflow's UI
#: otherwise treats a new experiment as GenAI development).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class TrackingWarning(UserWarning):
    """MLflow could not be used; training or evaluation goes on without it."""


def tracking_uri(uri: str | None = None) -> str:
    """``uri`` if given, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def mlflow_experiment_name(scope: str, experiment: str) -> str:
    """The MLflow experiment of a paper experiment in a scope: ``mair/<scope>/<experiment>``."""
    return f"mair/{scope}/{experiment}"


def flatten_params(obj: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as ``a.b.c -> str(value)`` (lists and scalars as text), for MLflow params."""
    out: dict[str, str] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = str(value)[:_MAX_PARAM_VALUE]
    return out


@functools.cache
def _code_commit() -> str | None:
    """The git commit of the mair code that runs (its checkout), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _default_source() -> str:
    """``mair train`` for ``.../bin/mair train ...``: the program and its subcommand."""
    words = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"]
    if len(sys.argv) > 1 and not sys.argv[1].startswith("-"):
        words.append(sys.argv[1])
    return " ".join(words)


def source_tags(source: str | None = None) -> dict[str, str]:
    """MLflow's standard run tags: what ran (``mlflow.source.name``, type ``LOCAL``), the code's git commit and the
    user, which the MLflow UI shows as "Source", the commit and "Created by"."""
    tags = {"mlflow.source.name": source or _default_source(), "mlflow.source.type": "LOCAL"}
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    commit = _code_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def _sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :]).expanduser().absolute()


def _is_lock_error(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}".lower()
    return "database is locked" in text or "database table is locked" in text


def _is_race_error(error: BaseException) -> bool:
    """Errors of concurrent first use of a fresh SQLite store (tables being created by another process)."""
    text = str(error).lower()
    return "already exists" in text or "no such table" in text or "unique constraint" in text


@contextlib.contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on ``<database>.lock`` for SQLite URIs (no-op otherwise or without ``fcntl``)."""
    path = _sqlite_path(uri)
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Tracker:
    """One MLflow run, used from a single process (rank 0). Every method is safe to call when disabled."""

    def __init__(
        self, uri: str | None = None, enabled: bool = True, lock_timeout: float = 60.0, probe_timeout: float = 3.0
    ) -> None:
        self.uri = tracking_uri(uri)
        self.enabled = enabled
        self.lock_timeout = lock_timeout
        self.probe_timeout = probe_timeout
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None
        self._warned = False

    # -------------------------------------------------------------------------------------------- plumbing

    def _disable(self, what: str, error: BaseException | str) -> None:
        self.enabled = False
        if not self._warned:
            self._warned = True
            if isinstance(error, str):
                detail = error
            else:
                detail = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
            warnings.warn(
                f"MLflow tracking off ({what} failed on {self.uri}: {detail}); the run's own files stay complete",
                TrackingWarning,
                stacklevel=3,
            )

    def _probe(self) -> str | None:
        """A reason the store cannot be reached, or None."""
        parsed = urlparse(self.uri)
        if parsed.scheme in ("http", "https"):
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            try:
                host = parsed.hostname or "localhost"
                with socket.create_connection((host, port), timeout=self.probe_timeout):
                    return None
            except OSError as error:
                return f"cannot connect to {parsed.hostname}:{port} ({error})"
        path = _sqlite_path(self.uri)
        if path is not None and not path.parent.is_dir():
            return f"folder {path.parent} of the SQLite store does not exist"
        return None

    def _connect(self) -> bool:
        if not self.enabled:
            return False
        if self._client is not None:
            return True
        reason = self._probe()
        if reason is not None:
            self._disable("connecting", reason)
            return False
        # Keep MLflow's HTTP retries short: a dead server must not stall training for minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            self._disable("importing mlflow", error)
            return False

        def make_client() -> Any:
            # Creating the client initialises (migrates) a fresh SQLite store; concurrent migrations of one
            # file break each other, so they are serialised with a lock file beside the database.
            with _sqlite_init_lock(self.uri):
                return MlflowClient(tracking_uri=self.uri)

        self._client = self._retry("opening the store", make_client)
        return self._client is not None

    def _call(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run ``fn`` once connected (see :meth:`_retry`)."""
        if not self._connect():
            return None
        return self._retry(what, fn)

    def _retry(self, what: str, fn: Callable[[], T]) -> T | None:
        """Run ``fn``; retry lock errors and first-use races until ``lock_timeout``; else warn once, disable."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        while True:
            try:
                return fn()
            except Exception as error:
                retry = _is_lock_error(error) or _is_race_error(error)
                if retry and time.monotonic() < deadline:
                    time.sleep(delay * (1.0 + random.random()))
                    delay = min(delay * 2, 2.0)
                    continue
                self._disable(what, error)
                return None

    def _experiment(self, name: str) -> str | None:
        client = self._client

        def get_or_create() -> str:
            found = client.get_experiment_by_name(name)
            if found is not None:
                if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made before the tag existed
                    client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                return str(found.experiment_id)
            db = _sqlite_path(self.uri)
            location = (db.parent / "mlartifacts").as_uri() if db is not None else None
            try:
                return str(
                    client.create_experiment(
                        name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
                    )
                )
            except Exception as error:  # created meanwhile by another process
                again = client.get_experiment_by_name(name)
                if again is None:
                    raise error from None
                return str(again.experiment_id)

        return self._call("creating the MLflow experiment", get_or_create)

    # -------------------------------------------------------------------------------------------- runs

    def start(
        self,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        source: str | None = None,
    ) -> str | None:
        """Start a run in MLflow experiment ``experiment``, or continue ``run_id`` if the store has it.

        The run gets :func:`source_tags` (``source``: what ran, default the command line's program and subcommand)
        under ``tags``. Returns the run id, or None when tracking is off.
        """
        if not self._connect():
            return None
        tags = {**source_tags(source), **(tags or {})}
        if run_id is not None:

            def resume() -> str | None:
                try:
                    run = self._client.get_run(run_id)
                except Exception as error:
                    if _is_lock_error(error):
                        raise
                    return None  # not in this store: start a new run
                self._client.update_run(run_id, status="RUNNING")
                return str(run.info.experiment_id)

            experiment_id = self._call("resuming the MLflow run", resume)
            if experiment_id is not None:
                self.run_id, self.experiment_id = run_id, experiment_id
                self.set_tags(tags or {})
                return run_id
            if not self.enabled:
                return None
        experiment_id = self._experiment(experiment)
        if experiment_id is None:
            return None
        clean_tags = {k: str(v) for k, v in (tags or {}).items()}
        run = self._call(
            "creating the MLflow run",
            lambda: self._client.create_run(experiment_id, tags=clean_tags, run_name=run_name),
        )
        if run is None:
            return None
        self.run_id, self.experiment_id = str(run.info.run_id), experiment_id
        return self.run_id

    @property
    def active(self) -> bool:
        """True while a run is open and tracking works."""
        return self.enabled and self.run_id is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (values as text, truncated to MLflow's limit); params already logged are kept."""
        if not self.active:
            return
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:_MAX_PARAM_VALUE]) for k, v in params.items()]
        for i in range(0, len(items), _BATCH):
            chunk = items[i : i + _BATCH]
            self._call("logging params", lambda chunk=chunk: self._log_params_chunk(chunk))

    def _log_params_chunk(self, chunk: list[Any]) -> None:
        try:
            self._client.log_batch(self.run_id, params=chunk, synchronous=True)
        except Exception as error:
            if _is_lock_error(error):
                raise
            # A resumed run may already hold some params: log the new ones one by one, skip the rest.
            existing = self._client.get_run(self.run_id).data.params
            for param in chunk:
                if param.key not in existing:
                    self._client.log_param(self.run_id, param.key, param.value)

    def log_metrics(self, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
        """Log metrics at ``step`` (one batch call); with ``model_id`` they also belong to that logged model."""
        if not self.active:
            return
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        items = [Metric(str(k), float(v), stamp, int(step), model_id=model_id) for k, v in metrics.items()]
        self._call("logging metrics", lambda: self._client.log_batch(self.run_id, metrics=items, synchronous=True))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) run tags."""
        if not self.active or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        self._call("setting tags", lambda: self._client.log_batch(self.run_id, tags=items, synchronous=True))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts (skipped when it does not exist)."""
        if not self.active or not Path(path).is_file():
            return
        self._call("logging an artifact", lambda: self._client.log_artifact(self.run_id, str(path), artifact_path))

    def log_artifacts(self, paths: Iterable[str | os.PathLike[str]], artifact_path: str | None = None) -> None:
        """Copy existing files into the run's artifacts (under ``artifact_path``)."""
        for path in paths:
            self.log_artifact(path, artifact_path)

    def log_model(
        self,
        weights: str | os.PathLike[str],
        name: str,
        files: Iterable[str | os.PathLike[str]] = (),
        params: Mapping[str, Any] | None = None,
        step: int = 0,
    ) -> str | None:
        """Log final weights as an MLflow logged model of this run; return its model id (None when off).

        The model holds the weights file as written (``{'params': state_dict}``, safe to read with
        ``torch.load(weights_only=True)``) and ``files`` (e.g. the run's config.yaml). The run is tagged with the
        model id and the weights' SHA-256, by which evaluations of these weights find their training run.
        """
        if not self.active or not Path(weights).is_file():
            return None
        import shutil
        import tempfile

        from mlflow.entities import LoggedModelOutput

        sha = _sha256(weights)
        client, run_id = self._client, self.run_id

        def create() -> str:
            model = client.create_logged_model(
                self.experiment_id,
                name=name,
                source_run_id=run_id,
                model_type="pytorch-weights",
                tags={"mair.weights_sha256": sha, "mair.format": "state_dict (torch.load weights_only=True)"},
                params={str(k): str(v)[:_MAX_PARAM_VALUE] for k, v in (params or {}).items()},
            )
            with tempfile.TemporaryDirectory(prefix="mair-model-") as folder:
                for path in [weights, *files]:
                    if Path(path).is_file():
                        shutil.copy2(path, Path(folder) / Path(path).name)
                client.log_model_artifacts(model.model_id, folder)
            client.finalize_logged_model(model.model_id, "READY")
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, int(step))])
            return str(model.model_id)

        model_id = self._call("logging the model", create)
        if model_id is not None:
            self.set_tags({"mair.model_id": model_id, "mair.weights_sha256": sha})
        return model_id

    def training_run_of(self, weights: str | os.PathLike[str]) -> tuple[str, str | None] | None:
        """``(run_id, model_id)`` of the training run in this run's experiment that logged exactly ``weights``
        (same SHA-256), or None."""
        if not self.active or not Path(weights).is_file():
            return None
        sha = _sha256(weights)
        client, experiment_id = self._client, self.experiment_id

        def find() -> list[Any]:
            return list(
                client.search_runs(
                    [experiment_id],
                    max_results=1,
                    order_by=["attributes.start_time DESC"],
                    filter_string=f"tags.`mair.kind` = 'training' and tags.`mair.weights_sha256` = '{sha}'",
                )
            )

        runs = self._call("finding the training run", find) or []
        if not runs:
            return None
        return str(runs[0].info.run_id), runs[0].data.tags.get("mair.model_id")

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run ``FINISHED``, ``FAILED`` or ``KILLED`` (an interrupted run that will resume)."""
        if not self.active:
            return
        self._call("ending the run", lambda: self._client.set_terminated(self.run_id, status=status))

    def run_tags(self) -> dict[str, str]:
        """The run's tags as stored (empty when tracking is off)."""
        if not self.active:
            return {}
        run = self._call("reading the run", lambda: self._client.get_run(self.run_id))
        return dict(run.data.tags) if run is not None else {}


# ------------------------------------------------------------------------------------------------ runtime


def runtime_tags(runtime: Mapping[str, Any]) -> dict[str, str]:
    """Tags saying which path a run took, from :meth:`mair.runtime.resolve.RuntimeSettings.as_dict`: ``mair.path``
    (default, exact or custom), ``mair.runtime.precision``, ``mair.scan_backend_used``, ``mair.compile`` (backend or
    off), ``mair.compile_mode`` (or -), ``mair.cuda_graphs``, ``mair.fused_adam`` and ``mair.runtime.resolve`` (the
    one-line description)."""
    return {
        "mair.path": str(runtime["path"]),
        "mair.precision": str(runtime["precision"]),
        "mair.scan_backend_used": str(runtime["scan_backend_resolved"]),
        "mair.compile": str(runtime["compile_backend"] or "off"),
        "mair.compile_mode": str(runtime["compile_mode"] or "-"),
        "mair.cuda_graphs": str(bool(runtime["cuda_graphs"])),
        "mair.fused_adam": str(bool(runtime["fused_adam"])),
        "mair.runtime": str(runtime["describe"])[:4000],
    }


# ------------------------------------------------------------------------------------------------ evaluation


def _flat_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in (summary.get("metrics") or {}).items():
        if isinstance(value, int | float):
            out[name] = float(value)
    for space, values in (summary.get("extra_metrics") or {}).items():
        for name, value in (values or {}).items():
            if isinstance(value, int | float):
                out[f"{name}_{space}"] = float(value)
    if isinstance(summary.get("n_images"), int):
        out["n_images"] = float(summary["n_images"])
    return out


def log_evaluation(
    summary: Mapping[str, Any],
    params: Mapping[str, Any] | None = None,
    artifacts: Iterable[str | os.PathLike[str]] = (),
    uri: str | None = None,
    images: Iterable[str | os.PathLike[str]] = (),
) -> str | None:
    """Log one evaluation summary (docs/contracts.md, "Evaluation results") as its own MLflow run.

    The run goes to ``mair/<scope>/<experiment>``, is named ``eval <dataset>`` (``+`` for MaIR+), holds the
    metrics (extra spaces as ``psnr_<space>``), ``params``, tags (experiment, dataset, variant, scope,
    weights), the ``artifacts`` files and the restored sample ``images`` (under ``samples/``). When the weights are
    those a training run of the experiment logged, the run is that run's child (``mlflow.parentRunId``, also
    ``mair.training_run``) and its metrics belong to the training's logged model too. Returns the run id, or None
    when MLflow is unavailable (after one warning).
    """
    experiment = str(summary.get("experiment", "unknown"))
    scope = str(summary.get("scope", "paper"))
    dataset = str(summary.get("dataset", "unknown"))
    variant = str(summary.get("variant", "MaIR"))
    tracker = Tracker(uri)
    tags = {
        "mair.kind": "evaluation",
        "mair.experiment": experiment,
        "mair.dataset": dataset,
        "mair.variant": variant,
        "mair.scope": scope,
    }
    for key in ("weights", "weights_source", "complete", "metric_space", "crop_border", "created", "submission"):
        if summary.get(key) is not None:
            tags[f"mair.{key}"] = summary[key]
    if isinstance(summary.get("runtime"), Mapping):
        tags.update(runtime_tags(summary["runtime"]))
    suffix = "+" if variant.endswith("+") else ""
    run_id = tracker.start(
        mlflow_experiment_name(scope, experiment), f"eval {dataset}{suffix}", tags, source="mair evaluate"
    )
    if run_id is None:
        return None
    weights = summary.get("weights")
    trained = tracker.training_run_of(weights) if isinstance(weights, str) else None
    model_id = None
    if trained is not None:
        training_run, model_id = trained
        tracker.set_tags(
            {
                "mlflow.parentRunId": training_run,
                "mair.training_run": training_run,
                **({"mair.model_id": model_id} if model_id else {}),
            }
        )
    tracker.log_params(dict(params or {}))
    tracker.log_metrics(_flat_metrics(summary), step=0)
    if model_id:  # the same values, keyed by test set, on the logged model (compare models in the UI)
        tracker.log_metrics(
            {f"{dataset}{suffix}/{k}": v for k, v in _flat_metrics(summary).items() if k != "n_images"},
            step=0,
            model_id=model_id,
        )
    tracker.log_artifacts(artifacts)
    tracker.log_artifacts(images, "samples")
    tracker.end("FINISHED")
    return run_id if tracker.enabled else None


def log_tables(
    scope: str, files: Iterable[str | os.PathLike[str]], out_dir: str | os.PathLike[str], uri: str | None = None
) -> str | None:
    """Log the tables and figures of ``mair tables`` (``files`` under ``out_dir``) as one run ``tables`` in the
    MLflow experiment ``mair/<scope>/tables``, keeping their folders. Returns the run id, or None when off."""
    tracker = Tracker(uri)
    run_id = tracker.start(
        mlflow_experiment_name(scope, "tables"),
        "tables",
        {"mair.kind": "tables", "mair.scope": scope},
        source="mair tables",
    )
    if run_id is None:
        return None
    root = Path(out_dir).resolve()
    for path in files:
        resolved = Path(path).resolve()
        folder = resolved.parent.relative_to(root).as_posix() if resolved.is_relative_to(root) else "."
        tracker.log_artifact(path, None if folder == "." else folder)
    tracker.end("FINISHED")
    return run_id if tracker.enabled else None


def _parse_tag(value: str) -> Any:
    if value in ("True", "False"):
        return value == "True"
    try:
        return int(value)
    except ValueError:
        return value


def eval_summaries(uri: str | None = None, scope: str = "paper") -> list[dict[str, Any]]:
    """The evaluation summaries logged by :func:`log_evaluation` in ``scope``, newest first, as dicts in the
    summary layout of docs/contracts.md plus ``run_id``. Empty (after one warning) when MLflow is unavailable.
    """
    tracker = Tracker(uri)
    if not tracker._connect():
        return []
    client = tracker._client

    def fetch() -> list[Any]:
        prefix = f"mair/{scope}/"
        ids = [e.experiment_id for e in client.search_experiments(max_results=1000) if str(e.name).startswith(prefix)]
        if not ids:
            return []
        return list(
            client.search_runs(
                ids,
                filter_string="tags.`mair.kind` = 'evaluation'",
                order_by=["attributes.start_time DESC"],
                max_results=5000,
            )
        )

    runs = tracker._retry("reading evaluation runs", fetch) or []
    out = []
    for run in runs:
        tags, metrics = run.data.tags, dict(run.data.metrics)
        summary: dict[str, Any] = {
            "experiment": tags.get("mair.experiment"),
            "dataset": tags.get("mair.dataset"),
            "variant": tags.get("mair.variant", "MaIR"),
            "scope": tags.get("mair.scope", scope),
            "metrics": {},
            "extra_metrics": {},
            "run_id": run.info.run_id,
        }
        for key in ("weights", "weights_source", "complete", "metric_space", "crop_border", "created", "submission"):
            if f"mair.{key}" in tags:
                summary[key] = _parse_tag(tags[f"mair.{key}"])
        if "n_images" in metrics:
            summary["n_images"] = int(metrics.pop("n_images"))
        for name, value in metrics.items():
            base, _, space = name.partition("_")
            if space:
                summary["extra_metrics"].setdefault(space, {})[base] = value
            else:
                summary["metrics"][name] = value
        out.append(summary)
    return out
