"""The typed experiment: frozen dataclasses, one per section of ``params/experiments/<id>.yaml``.

:func:`mair.experiments.load` builds an :class:`Experiment` from a validated file (and, for the demo scope, its
``demo`` block applied). Every key of an experiment file is a field here (tests/test_experiments.py checks it),
so code reads ``exp.train.optimizer.lr`` rather than ``exp["train"]["optimizer"]["lr"]``. Lists of the file are
tuples; the network's constructor arguments are a read-only mapping. :meth:`Experiment.to_dict` gives back the
document as the file held it (the run's ``config.yaml`` and the MLflow parameters are made from it).

Fields marked *documentation* are there for people (and ``mair info``, which prints them); no computation
depends on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Augmentation",
    "Complexity",
    "DatasetRef",
    "DemoBlock",
    "DropPath",
    "Experiment",
    "FrozenMapping",
    "InitFrom",
    "InitQuirk",
    "Loss",
    "Metrics",
    "Mixup",
    "Network",
    "Noise",
    "Official",
    "Optimizer",
    "PaperResults",
    "Patch",
    "Progressive",
    "Quirk",
    "Scheduler",
    "TestDatasetRef",
    "TestSpec",
    "TrainSpec",
    "ValSpec",
    "from_document",
]


class FrozenMapping(Mapping[str, Any]):
    """A read-only mapping (the network's constructor arguments) that, unlike ``MappingProxyType``, pickles and
    copies with the experiment."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] = ()) -> None:  # type: ignore[assignment]
        object.__setattr__(self, "_items", dict(items))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FrozenMapping({self._items!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMapping, (self._items,))


@dataclass(frozen=True)
class DatasetRef:
    """One dataset of a training, validation or test section: where its images are and how they pair."""

    id: str
    gt: str | None  # sub-folder of prepared/<id>/ with the ground truth
    lq: str | None  # sub-folder with the degraded inputs (None: synthesised from gt)
    pairing: str  # same_name | hazy_prefix | synthetic_noise | dnd_bboxes


@dataclass(frozen=True)
class TestDatasetRef(DatasetRef):
    """A test dataset: a :class:`DatasetRef` that may be a benchmark submission only."""

    __test__ = False  # not a pytest test class

    submission_only: bool = False  # no local metrics, a benchmark bundle instead


@dataclass(frozen=True)
class PaperResults:
    """Key into params/paper_results.csv (read by the report)."""

    task: str
    variants: tuple[str, ...]
    setting: str | None


@dataclass(frozen=True)
class Official:
    """Documentation: the official option files and released checkpoint this experiment reproduces."""

    train_yml: str
    test_yml: str | None
    weights: str | None


@dataclass(frozen=True)
class Network:
    """The architecture (``MaIR`` or ``MaIRUNet``) and its official constructor arguments."""

    arch: str
    kwargs: Mapping[str, Any]  # read-only; lists of the file are tuples

    def constructor_kwargs(self) -> dict[str, Any]:
        """The constructor arguments as the official code received them (lists, not tuples)."""
        return {k: _plain(v) for k, v in self.kwargs.items()}

    @property
    def in_channels(self) -> int:
        """Channels of the network input."""
        return int(self.kwargs.get("in_chans", self.kwargs.get("inp_channels", 3)))

    @property
    def output_scale(self) -> int:
        """Output side over input side (1 for the restoration tasks and a MaIR without upsampler)."""
        if self.arch == "MaIR" and self.kwargs.get("upsampler"):
            return int(self.kwargs.get("upscale", 1))
        return 1


@dataclass(frozen=True)
class Patch:
    gt_size: int
    lq_size: int


@dataclass(frozen=True)
class Optimizer:
    type: str  # Adam | AdamW
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float


@dataclass(frozen=True)
class Scheduler:
    """``MultiStepLR`` (milestones, gamma) or ``CosineAnnealingRestartCyclicLR`` (periods, restart_weights,
    eta_mins); the fields of the other type are None."""

    type: str
    milestones: tuple[int, ...] | None = None
    gamma: float | None = None
    periods: tuple[int, ...] | None = None
    restart_weights: tuple[float, ...] | None = None
    eta_mins: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Loss:
    type: str  # l1 | charbonnier
    weight: float
    reduction: str
    eps: float | None = None  # charbonnier only


@dataclass(frozen=True)
class DropPath:
    rate: float  # equals network.kwargs.drop_path_rate (checked)
    note: str  # documentation


@dataclass(frozen=True)
class Augmentation:
    hflip: bool
    rot: bool
    geometric_augs: bool


@dataclass(frozen=True)
class Progressive:
    mini_batch_sizes: tuple[int, ...]
    gt_sizes: tuple[int, ...]
    iters: tuple[int, ...]


@dataclass(frozen=True)
class Mixup:
    beta: float
    use_identity: bool


@dataclass(frozen=True)
class InitQuirk:
    """An official initialisation choice with its fix (MaIR-T x3 starts from the MaIR-S x2 weights)."""

    official: str
    fixed: str
    default: str  # official | fixed
    note: str  # documentation

    def chosen(self, choice: str | None = None) -> str:
        """The init experiment for ``choice`` (``official`` or ``fixed``; None: the file's default)."""
        return {"official": self.official, "fixed": self.fixed}[choice or self.default]


@dataclass(frozen=True)
class InitFrom:
    experiment: str  # whose final weights initialise this one
    strict: bool
    weights: str  # documentation: the official checkpoint file the yml loaded
    quirk: InitQuirk | None


@dataclass(frozen=True)
class TrainSpec:
    datasets: tuple[DatasetRef, ...]
    patch: Patch
    batch_per_gpu: int
    gpus: int
    effective_batch: int
    total_iter: int
    optimizer: Optimizer
    scheduler: Scheduler
    loss: Loss
    grad_clip: float | None
    drop_path: DropPath
    augmentation: Augmentation
    dataset_enlarge_ratio: int
    progressive: Progressive | None
    mixup: Mixup | None
    noise_sigma: float | None
    seed: int
    init_from: InitFrom | None
    checkpoint_freq: int
    print_freq: int
    num_workers_per_gpu: int


@dataclass(frozen=True)
class Noise:
    """Test-time synthetic Gaussian noise (colour denoising)."""

    sigma: float
    seed: int
    reseed_per_image: bool
    channel_order: str
    clip: bool


@dataclass(frozen=True)
class Metrics:
    names: tuple[str, ...]
    crop_border: int
    test_y_channel: bool  # primary space: Y (True) or RGB
    extra_spaces: tuple[str, ...]
    use_image: bool  # uint8 images (True) or float tensors
    rgb2bgr: bool


@dataclass(frozen=True)
class ValSpec:
    dataset: DatasetRef
    noise: Noise | None
    metrics: Metrics
    val_freq: int
    val_freq_final: int
    val_milestone: int
    protocol: str  # tile | pad8


@dataclass(frozen=True)
class TestSpec:
    __test__ = False  # not a pytest test class

    datasets: tuple[TestDatasetRef, ...]
    noise: Noise | None
    metrics: Metrics
    protocol: str  # tile | pad8
    self_ensemble_reported: bool


@dataclass(frozen=True)
class Complexity:
    """The paper's parameter and FLOP counts (None where it gives none, and in the demo scope)."""

    params: int | None
    flops_input_size: tuple[int, int] | None
    flops_g: float | None
    flops_mflops_per_pixel: float | None


@dataclass(frozen=True)
class Quirk:
    """Documentation: how an official quirk is handled (kept, fixed or an option)."""

    ref: str
    handling: str
    note: str


@dataclass(frozen=True)
class DemoTrain:
    patch: Patch
    batch_per_gpu: int
    gpus: int
    effective_batch: int
    total_iter: int
    scheduler: Scheduler
    progressive: Progressive | None
    dataset_enlarge_ratio: int
    checkpoint_freq: int
    print_freq: int
    num_workers_per_gpu: int


@dataclass(frozen=True)
class DemoVal:
    val_freq: int
    val_freq_final: int
    val_milestone: int


@dataclass(frozen=True)
class DemoBlock:
    """The demo-scale values (paper scope only); ``load(id, "demo")`` applies them."""

    network_kwargs: Mapping[str, Any]
    train: DemoTrain
    val: DemoVal


@dataclass(frozen=True)
class Experiment:
    """One paper experiment at one scope (``paper`` or ``demo``), as :func:`mair.experiments.load` returns it."""

    id: str
    scope: str
    task: str
    title: str  # documentation
    paper_table: str  # documentation
    paper_results: PaperResults
    scale: int
    official: Official
    network: Network
    train: TrainSpec
    val: ValSpec
    test: TestSpec
    complexity: Complexity
    paper_gpus: int
    quirks: tuple[Quirk, ...]
    demo: DemoBlock | None

    def to_dict(self) -> dict[str, Any]:
        """The experiment document as a plain dict in the file's key order (lists, not tuples): what the run's
        ``config.yaml`` records and the MLflow parameters are flattened from."""
        return _plain(self)

    def test_dataset(self, dataset_id: str) -> TestDatasetRef | None:
        """The test dataset ``dataset_id``, or None."""
        return next((ref for ref in self.test.datasets if ref.id == dataset_id), None)


# ------------------------------------------------------------------------------------------------ building


def _plain(value: Any) -> Any:
    """Dataclasses, read-only mappings and tuples back to dicts and lists (field order kept)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None and f.default is None and _optional_key(value, f.name):
                continue  # a key the file leaves out (e.g. the MultiStepLR fields of a cosine scheduler)
            out[f.name] = _plain(item)
        return out
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def _optional_key(obj: Any, name: str) -> bool:
    """Keys that exist in the file only for some variants of a section."""
    return isinstance(obj, (Scheduler, Loss))


def _frozen(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenMapping({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def _build(cls: type, doc: Mapping[str, Any], **nested: Any) -> Any:
    """``cls(**doc)`` with lists as tuples; ``nested`` gives the already-built values of sub-sections."""
    values = {k: nested[k] if k in nested else _frozen(v) for k, v in doc.items()}
    return cls(**values)


def _maybe(builder: Any, doc: Mapping[str, Any] | None) -> Any:
    return None if doc is None else builder(doc)


def _dataset(doc: Mapping[str, Any]) -> DatasetRef:
    return _build(DatasetRef, doc)


def _datasets(docs: list[Mapping[str, Any]]) -> tuple[DatasetRef, ...]:
    return tuple(_dataset(d) for d in docs)


def _init_from(doc: Mapping[str, Any]) -> InitFrom:
    return _build(InitFrom, doc, quirk=_maybe(lambda q: _build(InitQuirk, q), doc["quirk"]))


def _train(doc: Mapping[str, Any]) -> TrainSpec:
    return _build(
        TrainSpec,
        doc,
        datasets=_datasets(doc["datasets"]),
        patch=_build(Patch, doc["patch"]),
        optimizer=_build(Optimizer, doc["optimizer"]),
        scheduler=_build(Scheduler, doc["scheduler"]),
        loss=_build(Loss, doc["loss"]),
        drop_path=_build(DropPath, doc["drop_path"]),
        augmentation=_build(Augmentation, doc["augmentation"]),
        progressive=_maybe(lambda p: _build(Progressive, p), doc["progressive"]),
        mixup=_maybe(lambda m: _build(Mixup, m), doc["mixup"]),
        init_from=_maybe(_init_from, doc["init_from"]),
    )


def _noise(doc: Mapping[str, Any] | None) -> Noise | None:
    return _maybe(lambda n: _build(Noise, n), doc)


def _val(doc: Mapping[str, Any]) -> ValSpec:
    return _build(
        ValSpec,
        doc,
        dataset=_dataset(doc["dataset"]),
        noise=_noise(doc["noise"]),
        metrics=_build(Metrics, doc["metrics"]),
    )


def _test(doc: Mapping[str, Any]) -> TestSpec:
    return _build(
        TestSpec,
        doc,
        datasets=tuple(_build(TestDatasetRef, d) for d in doc["datasets"]),
        noise=_noise(doc["noise"]),
        metrics=_build(Metrics, doc["metrics"]),
    )


def _demo(doc: Mapping[str, Any]) -> DemoBlock:
    train = doc["train"]
    return _build(
        DemoBlock,
        doc,
        train=_build(
            DemoTrain,
            train,
            patch=_build(Patch, train["patch"]),
            scheduler=_build(Scheduler, train["scheduler"]),
            progressive=_maybe(lambda p: _build(Progressive, p), train["progressive"]),
        ),
        val=_build(DemoVal, doc["val"]),
    )


def from_document(doc: Mapping[str, Any]) -> Experiment:
    """The :class:`Experiment` of a validated document (:func:`mair.experiments.load` validates first)."""
    return _build(
        Experiment,
        doc,
        paper_results=_build(PaperResults, doc["paper_results"]),
        official=_build(Official, doc["official"]),
        network=_build(Network, doc["network"]),
        train=_train(doc["train"]),
        val=_val(doc["val"]),
        test=_test(doc["test"]),
        complexity=_build(Complexity, doc["complexity"]),
        quirks=tuple(_build(Quirk, q) for q in doc["quirks"]),
        demo=_maybe(_demo, doc["demo"]),
    )
