"""Every ``MAIR_*`` environment variable mair reads, declared once; docs/switches.md is their table.

A switch's value is, in this order: a value set from Python (:func:`override`, :func:`set_values`), else its
environment variable, else its default. The environment's text is parsed and checked when the switch is first
read and again only when that text changes (one dictionary lookup per read), so a bad value fails at its first
use with one line naming the variable and what was expected (:class:`SwitchError`).

Across processes the environment is the carrier: Snakemake jobs, ``torchrun`` workers and ``srun`` tasks inherit
it, so set the variable in the shell (or in the environment of ``snakemake``) for them. Values set from Python
reach a child process only when it is started with :func:`child_environ` as its environment.

Light on purpose (no torch import): the pipeline and ``mair --help`` import it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = [
    "SWITCHES",
    "Switch",
    "SwitchError",
    "child_environ",
    "format_value",
    "get",
    "markdown_table",
    "override",
    "parse_size",
    "report",
    "reset",
    "set_values",
    "source",
    "switch",
]

DOCS = "docs/switches.md"


class SwitchError(ValueError):
    """A switch holds text it cannot mean; the message names the variable and what was expected."""


@dataclass(frozen=True)
class Switch:
    """One environment variable: how its text is read and what it does."""

    var: str  # MAIR_...
    group: str  # the table's section
    default: Any  # the value when unset (None: decided where it is used; ``default_text`` says how)
    expected: str  # what the text must look like, in words (error messages and the table)
    help: str  # what it does, one or two sentences
    docs: str  # where the details are (a docs page and section)
    parse: Callable[[str], Any]  # text -> value; raises ValueError on anything else
    default_text: str = ""  # the default in words, when ``default`` alone does not say it
    empty_is_unset: bool = True  # an empty value counts as unset (else it is parsed)

    @property
    def key(self) -> str:
        """The Python name: ``MAIR_SCAN_BACKEND`` -> ``scan_backend``."""
        return self.var.removeprefix("MAIR_").lower()

    def read(self, text: str) -> Any:
        """``text`` parsed, or :class:`SwitchError` naming the variable and what was expected."""
        try:
            return self.parse(text)
        except (ValueError, TypeError):
            raise SwitchError(f"{self.var}={text!r}: expected {self.expected}") from None

    def describe_default(self) -> str:
        if self.default_text:
            return self.default_text
        return "unset" if self.default is None else format_value(self.default)


# ---------------------------------------------------------------------------------------------------- parsers

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(text)


def _path(text: str) -> str:
    """A path as written (``~`` is expanded where it is used)."""
    return text


def _url(text: str) -> str:
    return text.strip().rstrip("/") or _fail(text)


def _name(text: str) -> str | None:
    """A lower-case name; ``auto`` (or blank) means the automatic choice (None)."""
    word = text.strip().lower()
    return None if word in ("", "auto") else word


def _positive_int(text: str) -> int:
    value = int(text.strip())
    return value if value > 0 else _fail(text)


def _megabytes(minimum: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        return value if value >= minimum and value == value and value != float("inf") else _fail(text)

    return parse


def _ints(count: int, powers_of_two: bool = False) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        values = tuple(int(v) for v in text.split(","))
        if len(values) != count or any(v < 1 or (powers_of_two and v & (v - 1)) for v in values):
            raise ValueError(text)
        return values

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = text.strip()
        return word if word in choices else _fail(text)

    return parse


def _ids(text: str) -> tuple[str, ...]:
    """Comma-separated card ids; empty (or ``-1``) means none."""
    return tuple(v.strip() for v in text.split(",") if v.strip() and v.strip() != "-1")


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"500G"`` -> bytes (K, M, G, T are powers of 1024; ``KiB``/``KB`` spellings accepted); ValueError else."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(text)
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _positive_size(text: str) -> int:
    value = parse_size(text)
    return value if value > 0 else _fail(text)


def _fail(text: str) -> Any:
    raise ValueError(text)


def format_value(value: Any) -> str:
    """A value as the text its variable would hold (tuples comma-separated, booleans 1/0)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------------------------- declarations

SWITCHES: tuple[Switch, ...] = (
    # Where things are
    Switch(
        "MAIR_PARAMS_DIR",
        "Files and folders",
        None,
        "a folder holding experiments/ and datasets.yaml",
        "The params folder every command reads (experiments, data and weights catalogs). The Snakefile sets it "
        "to its own checkout's params/ for every job.",
        "docs/experiments.md",
        _path,
        default_text="the params/ of the checkout the working directory is in, else the installed package's",
    ),
    Switch(
        "MAIR_DATA_DIR",
        "Files and folders",
        None,
        "a folder",
        "The data root (`raw/`, `prepared/`, `weights/`); `--data-dir` wins over it.",
        "docs/data.md, The data root",
        _path,
        default_text="./data",
    ),
    Switch(
        "MAIR_COMPILE_CACHE",
        "Files and folders",
        None,
        "a folder",
        "Where torch.compile's and Triton's caches persist between processes (point it at a shared folder on a "
        "cluster).",
        "docs/training.md, Fast by default, exact on request",
        _path,
        default_text="$XDG_CACHE_HOME/mair/compile, else ~/.cache/mair/compile",
    ),
    # Downloads and extraction
    Switch(
        "MAIR_DATA_MIRROR",
        "Downloads and extraction",
        None,
        "a base URL",
        "Fetch `<URL>/<dataset id>/<file name>` instead of the catalog's URLs; `--mirror` wins over it.",
        "docs/data.md, Mirrors",
        _url,
        default_text="the catalog's URLs",
    ),
    Switch(
        "MAIR_WEIGHTS_MIRROR",
        "Downloads and extraction",
        None,
        "a base URL",
        "Fetch published weights from `<URL>/<file name>` instead of the authors' Google Drive folder.",
        "docs/evaluation.md, Published weights",
        _url,
        default_text="the authors' Google Drive folder",
    ),
    Switch(
        "MAIR_MAX_EXTRACT_SIZE",
        "Downloads and extraction",
        None,
        "a size such as 800M or 500G",
        "Most bytes one extraction may write; `--max-extract-size` wins over it.",
        "docs/data.md, Extraction limits",
        _positive_size,
        default_text="20 times the archive's size, at least 256 MiB",
    ),
    Switch(
        "MAIR_MAX_EXTRACT_MEMBERS",
        "Downloads and extraction",
        None,
        "a positive whole number",
        "Most files, folders and links one extraction may create; `--max-members` wins over it.",
        "docs/data.md, Extraction limits",
        _positive_int,
        default_text="1000000",
    ),
    Switch(
        "MAIR_PREPARE_WORKERS",
        "Downloads and extraction",
        None,
        "a positive whole number",
        "Threads for the image work of data preparation.",
        "docs/data_layout.md, Common rules",
        _positive_int,
        default_text="the CPU count, at most 8",
    ),
    # Pipeline
    Switch(
        "MAIR_GPU_IDS",
        "Pipeline",
        None,
        "comma-separated GPU ids (empty: none)",
        "The cards the pipeline's jobs may claim on this machine; empty means none.",
        "docs/pipeline.md, GPUs",
        _ids,
        default_text="$CUDA_VISIBLE_DEVICES, else the cards nvidia-smi -L lists",
        empty_is_unset=False,
    ),
    Switch(
        "MAIR_GPU_LOCK_DIR",
        "Pipeline",
        None,
        "a folder on this machine",
        "Where the pipeline's per-card lock files are.",
        "docs/pipeline.md, GPUs",
        _path,
        default_text="mair-gpu-slots-UID in the temporary folder",
    ),
    # What runs
    Switch(
        "MAIR_SCAN_BACKEND",
        "What runs",
        None,
        "a selective-scan backend: torch, triton, mamba, reference, or auto",
        "The selective-scan backend of every VMM (a command's own option and a model's `scan_backend` win over "
        "it). Setting it makes a run's settings `custom`.",
        "docs/training.md, Fast by default, exact on request",
        _name,
        default_text="automatic",
    ),
    Switch(
        "MAIR_SCAN_CUSTOM_OP",
        "What runs",
        False,
        "1 or 0 (true/false, yes/no, on/off)",
        "Route the VMM's scans through the `mair::` custom ops, as `torch.compile` does (compiling turns it on "
        "by itself).",
        "docs/training.md, Fast by default, exact on request",
        _bool,
    ),
    Switch(
        "MAIR_SCAN_CPU_WORKSPACE_MB",
        "What runs",
        256.0,
        "a number of MiB, 0 or more",
        "Most memory the torch scan keeps in its per-thread pool of CPU buffers (0 turns the pool off).",
        "docs/benchmarks.md, CPU",
        _megabytes(0.0),
    ),
    Switch(
        "MAIR_SCAN_CPU_BLOCK_MB",
        "What runs",
        32.0,
        "a number of MiB, more than 0",
        "State memory per block of channels in the torch scan's inference path (NSS order folded in).",
        "docs/benchmarks.md, CPU",
        _megabytes(1e-12),
    ),
    # Tuning of the Triton kernels
    Switch(
        "MAIR_TRITON_TILES",
        "Tuning (benchmarks only)",
        None,
        "'BL,BD,warps' (three positive integers)",
        "The Triton scan's chunk length, channels per program and warps of its adjoint-summary kernel.",
        "docs/benchmarks.md, Open GPU work, in order",
        _ints(3),
        default_text="chosen from the problem's size",
    ),
    Switch(
        "MAIR_TRITON_STEP_BD",
        "Tuning (benchmarks only)",
        None,
        "a positive whole number",
        "Channels per program of the Triton scan's step-by-step forward kernel.",
        "docs/benchmarks.md, Open GPU work, in order",
        _positive_int,
        default_text="32",
    ),
    Switch(
        "MAIR_TRITON_BWD_STEP",
        "Tuning (benchmarks only)",
        None,
        "'BD,S' (two positive integers)",
        "Channels per program and sub-chunk length of the Triton scan's step-by-step backward.",
        "docs/benchmarks.md, Open GPU work, in order",
        _ints(2),
        default_text="16,4",
    ),
    Switch(
        "MAIR_TRITON_CHAIN",
        "Tuning (benchmarks only)",
        "scan",
        "scan or loop",
        "How the Triton scan chains its chunk states: scan (blocks of chunks in parallel) or loop (one chunk per "
        "step).",
        "docs/benchmarks.md, Open GPU work, in order",
        _choice("scan", "loop"),
    ),
    Switch(
        "MAIR_TRITON_DELTA_IN_KERNEL",
        "Tuning (benchmarks only)",
        None,
        "1 or 0 (true/false, yes/no, on/off)",
        "Force the Triton forward kernel to project Δ from its low-rank input itself (1) or never (0).",
        "docs/benchmarks.md, Open GPU work, in order",
        _bool,
        default_text="by state size (on for d_state 1, where it was measured faster)",
    ),
    Switch(
        "MAIR_DWCONV_TILES",
        "Tuning (benchmarks only)",
        None,
        "'BP,BC,warps' (three powers of two)",
        "Positions and channels per program and warps of the Triton depthwise convolution.",
        "docs/benchmarks.md, Open GPU work, in order",
        _ints(3, powers_of_two=True),
        default_text="64,32,4",
    ),
)

_BY_NAME: dict[str, Switch] = {s.var: s for s in SWITCHES} | {s.key: s for s in SWITCHES}
_OVERRIDES: dict[str, Any] = {}  # var -> value set from Python
_PARSED: dict[str, tuple[str, Any]] = {}  # var -> (text, value) of the last environment text read


def switch(name: str) -> Switch:
    """The declaration of ``name`` (``MAIR_SCAN_BACKEND`` or ``scan_backend``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"no switch {name!r}; known: {', '.join(s.var for s in SWITCHES)}") from None


def _from_environment(sw: Switch, environ: Mapping[str, str]) -> tuple[bool, Any]:
    """(whether the environment sets it, its value)."""
    text = environ.get(sw.var)
    if text is None or (sw.empty_is_unset and not text.strip()):
        return False, sw.default
    if environ is os.environ:
        cached = _PARSED.get(sw.var)
        if cached is not None and cached[0] == text:
            return True, cached[1]
        value = sw.read(text)
        _PARSED[sw.var] = (text, value)
        return True, value
    return True, sw.read(text)


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of switch ``name``: set from Python, else from the environment, else the default.

    ``environ``: read this mapping instead of the process's environment (and ignore values set from Python),
    for code that prepares another process's environment."""
    sw = switch(name)
    if environ is None:
        if sw.var in _OVERRIDES:
            return _OVERRIDES[sw.var]
        environ = os.environ
    return _from_environment(sw, environ)[1]


def source(name: str) -> str:
    """Where the value of ``name`` comes from: ``python``, ``environment`` or ``default``."""
    sw = switch(name)
    if sw.var in _OVERRIDES:
        return "python"
    return "environment" if _from_environment(sw, os.environ)[0] else "default"


def _checked(sw: Switch, value: Any) -> Any:
    """A value given from Python, checked as its text would be (None: the default)."""
    if value is None:
        return sw.default
    return sw.read(value if isinstance(value, str) else format_value(value))


def set_values(**values: Any) -> None:
    """Set switches from Python for the rest of the process (``set_values(scan_backend="torch")``); a value is
    checked as its environment text would be, and None means the default whatever the environment says."""
    checked = {switch(k).var: _checked(switch(k), v) for k, v in values.items()}
    _OVERRIDES.update(checked)


def reset(*names: str) -> None:
    """Forget values set from Python (all of them without names): the environment decides again."""
    for var in [switch(n).var for n in names] if names else list(_OVERRIDES):
        _OVERRIDES.pop(var, None)


@contextmanager
def override(**values: Any) -> Iterator[None]:
    """Set switches from Python inside a ``with`` block (tests, benchmarks), then restore what was there."""
    before = {switch(k).var: _OVERRIDES.get(switch(k).var, _MISSING) for k in values}
    set_values(**values)
    try:
        yield
    finally:
        for var, value in before.items():
            if value is _MISSING:
                _OVERRIDES.pop(var, None)
            else:
                _OVERRIDES[var] = value


_MISSING = object()


def child_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a child process: ``base`` (default: this process's) with the values set from Python
    written in (a value equal to an unset default removes the variable)."""
    env = dict(os.environ if base is None else base)
    for var, value in _OVERRIDES.items():
        sw = switch(var)
        if value is None or (value == sw.default and sw.default is None):
            env.pop(var, None)
        else:
            env[var] = format_value(value)
    return env


def report() -> list[dict[str, Any]]:
    """Every switch with its value and where it comes from (``mair info --runtime``); a value that cannot be
    read is reported as such instead of raising."""
    rows = []
    for sw in SWITCHES:
        try:
            value, origin = get(sw.var), source(sw.var)
            shown = sw.describe_default() if origin == "default" else format_value(value)
        except SwitchError as error:
            value, origin, shown = None, "environment", f"invalid: {error}"
        rows.append(
            {
                "name": sw.var,
                "value": list(value) if isinstance(value, tuple) else value,
                "shown": shown,
                "source": origin,
                "group": sw.group,
            }
        )
    return rows


def markdown_table() -> str:
    """The table of docs/switches.md, generated from the declarations (a test keeps the page in step)."""
    lines = []
    for group in dict.fromkeys(s.group for s in SWITCHES):
        lines += [
            f"### {group}",
            "",
            "| Variable | Expected | Default | What it does | Details |",
            "|---|---|---|---|---|",
        ]
        for sw in (s for s in SWITCHES if s.group == group):
            lines.append(f"| `{sw.var}` | {sw.expected} | {sw.describe_default()} | {sw.help} | {sw.docs} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
