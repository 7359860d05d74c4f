"""The paper's six tasks in one table: what each one trains, how it is tested and where its numbers go.

An experiment file names its task (``task: sr_light`` in ``params/experiments/<id>.yaml``); everything that
depends on the task and not on the single experiment is read from :data:`TASKS` here: the network family, the
test protocol, which metrics and in which colour space, what a training pair is, the paper table the numbers
go to (its id is the task's name, as in ``params/paper_results.csv``) and the Snakemake target that reproduces
it. The experiment schema's ``task`` enum must list exactly these names (tests/test_tasks.py checks it).

This module imports nothing heavy: the Snakefile reads it on every invocation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FAMILIES", "MAIR", "MAIR_UNET", "TASKS", "NetworkFamily", "Task", "get_task", "task_names"]


@dataclass(frozen=True)
class NetworkFamily:
    """A network of the paper: its official class name and how it is tested."""

    arch: str  # the official class name: ``network.arch`` of an experiment, ``mair.models.from_official``
    unet: bool  # the Restormer-shaped U-Net of the realDenoising code (restores at scale 1)
    protocol: Literal["tile", "pad8"]  # tile: official ~200-px tiles with overlap; pad8: reflect-pad to 8


MAIR = NetworkFamily(arch="MaIR", unet=False, protocol="tile")
MAIR_UNET = NetworkFamily(arch="MaIRUNet", unet=True, protocol="pad8")
FAMILIES: dict[str, NetworkFamily] = {f.arch: f for f in (MAIR, MAIR_UNET)}


@dataclass(frozen=True)
class Task:
    """One task of the paper (the ``task`` value of an experiment file)."""

    name: str  # the ``task`` value, and the id of its paper table
    title: str  # the paper table's heading
    family: NetworkFamily
    # basicsr: calculate_psnr / calculate_ssim on uint8 images; realdenoising: the float family of the U-Net code
    # (calculate_psnr_float & co., see mair.evaluate.metrics).
    metrics: Literal["basicsr", "realdenoising"]
    metric_space: Literal["y", "rgb"]  # the colour space of the reported numbers
    crops_scale: bool  # the metrics skip a border as wide as the scale (SR); else no border
    # What a training pair is. lr_hr: a low-resolution image and its high-resolution original (x scale);
    # synthetic_noise: a clean image and the same image with Gaussian noise of train.noise_sigma added on the fly;
    # paired: a degraded image and its clean original, same size (real noisy/clean, blurred/sharp, hazy/clear).
    training_pair: Literal["lr_hr", "synthetic_noise", "paired"]
    lq_role: str  # what the network's input is
    gt_role: str  # what its target is
    pairings: tuple[str, ...]  # the dataset ``pairing`` kinds its experiments use (params/schema)
    setting: Literal["scale", "sigma"] | None  # what tells the rows of its paper table apart (x2.., sigma15..)
    methods: tuple[str, ...]  # our rows in its paper table (MaIR+ is the self-ensemble of MaIR)
    target: str  # the Snakemake target that reproduces it
    target_help: str  # the target's one line of help
    aliases: tuple[str, ...]  # other spellings a summary or an MLflow tag may give for the task
    id_pattern: str  # regex that recognises the task in an experiment id not in params/ (report fallback)

    @property
    def arch(self) -> str:
        """The official class name of its network."""
        return self.family.arch

    @property
    def unet(self) -> bool:
        """True for the U-Net tasks (real denoising, deblurring, dehazing)."""
        return self.family.unet

    @property
    def protocol(self) -> str:
        """Its test protocol (``tile`` or ``pad8``)."""
        return self.family.protocol

    def crop_border(self, scale: int) -> int:
        """The border the metrics skip at ``scale`` when the experiment does not say."""
        return scale if self.crops_scale else 0


_SR = {
    "family": MAIR,
    "metrics": "basicsr",
    "metric_space": "y",
    "crops_scale": True,
    "training_pair": "lr_hr",
    "lq_role": "LR",
    "gt_role": "HR",
    "pairings": ("same_name",),
    "setting": "scale",
}
_UNET = {
    "family": MAIR_UNET,
    "metrics": "realdenoising",
    "metric_space": "rgb",
    "crops_scale": False,
    "training_pair": "paired",
    "setting": None,
    "methods": ("MaIR",),
}

#: The tasks in paper order (the order of the tables).
TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="sr_classic",
            title="Classic image super-resolution",
            methods=("MaIR",),
            target="reproduce_sr",
            target_help="Classic SR x2/x3/x4 (MaIR and MaIR+) on Set5, Set14, B100, Urban100, Manga109.",
            aliases=("classic_sr", "sr", "classicsr"),
            id_pattern=r"sr",
            **_SR,
        ),
        Task(
            name="sr_light",
            title="Lightweight image super-resolution",
            methods=("MaIR-S", "MaIR-T"),
            target="reproduce_light_sr",
            target_help="Lightweight SR, MaIR-S and MaIR-T x2/x3/x4.",
            aliases=("light_sr", "lightsr", "lightweight_sr"),
            id_pattern=r"light|lsr",
            **_SR,
        ),
        Task(
            name="dn_color",
            title="Gaussian colour image denoising",
            family=MAIR,
            metrics="basicsr",
            metric_space="rgb",
            crops_scale=False,
            training_pair="synthetic_noise",
            lq_role="noisy",
            gt_role="clean",
            pairings=("synthetic_noise",),
            setting="sigma",
            methods=("MaIR",),
            target="reproduce_denoising",
            target_help="Colour denoising, sigma 15/25/50, on McMaster, Kodak24, CBSD68, Urban100.",
            aliases=("cdn", "color_dn", "denoising_color", "gaussian_dn"),
            id_pattern=r"cdn|color|colour|gauss|sigma|(^|[_-])dn([_-]|$)|(^|[_-])s(15|25|50)([_-]|$)",
        ),
        Task(
            name="dn_real",
            title="Real image denoising",
            lq_role="real noisy",
            gt_role="clean",
            pairings=("same_name", "dnd_bboxes"),
            target="reproduce_real_denoising",
            target_help="Real denoising: SIDD validation and the DND submission bundle.",
            aliases=("real_dn", "realdn", "real_denoising"),
            id_pattern=r"real|sidd|dnd",
            **_UNET,
        ),
        Task(
            name="deblur",
            title="Motion deblurring",
            lq_role="blurred",
            gt_role="sharp",
            pairings=("same_name",),
            target="reproduce_deblurring",
            target_help="Motion deblurring: GoPro and HIDE.",
            aliases=("motion_deblur", "motiondeblur", "deblurring"),
            id_pattern=r"deblur|gopro|motion",
            **_UNET,
        ),
        Task(
            name="dehaze",
            title="Image dehazing",
            lq_role="hazy",
            gt_role="clear",
            pairings=("hazy_prefix", "same_name"),
            target="reproduce_dehazing",
            target_help="Dehazing: SOTS indoor (ITS), SOTS outdoor (OTS), RESIDE-6K.",
            aliases=("dehazing",),
            id_pattern=r"dehaz|(^|[_-])(its|ots|r6k|reside)([_-]|$)",
            **_UNET,
        ),
    )
}


def task_names() -> tuple[str, ...]:
    """The task names in paper order."""
    return tuple(TASKS)


def get_task(name: str) -> Task:
    """The task called ``name``; a ValueError naming the known tasks otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None
