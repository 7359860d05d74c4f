"""Reading experiment files: where ``params/`` is, YAML without duplicate keys, the JSON schema and the
cross-field rules, and :func:`load`, the one loader of an experiment at a scope.

Errors are :class:`ExperimentError` with a message naming the file and the JSON path of the problem.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from mair.experiments.spec import Experiment, from_document
from mair.runtime import switches
from mair.tasks import FAMILIES, TASKS

#: The paper's experiments in paper order; :func:`experiment_ids` lists files in this order first.
PAPER_ORDER: tuple[str, ...] = (
    "sr_classic_x2",
    "sr_classic_x3",
    "sr_classic_x4",
    "sr_light_s_x2",
    "sr_light_s_x3",
    "sr_light_s_x4",
    "sr_light_t_x2",
    "sr_light_t_x3",
    "sr_light_t_x4",
    "dn_color_s15",
    "dn_color_s25",
    "dn_color_s50",
    "dn_real",
    "deblur_motion",
    "dehaze_its",
    "dehaze_ots",
    "dehaze_r6k",
)

# Demo networks must keep what decides the architecture's shape of output and its input channels.
_DEMO_KEEP = {
    "MaIR": ("upscale", "upsampler", "in_chans", "img_range"),
    "MaIRUNet": ("inp_channels", "out_channels"),
}


class ExperimentError(ValueError):
    """An experiment file is missing, unreadable or invalid (the message names the file and the key)."""


# ------------------------------------------------------------------------------------------------ locations


def enclosing_checkout(start: Path | None = None) -> Path | None:
    """The pipeline checkout holding ``start`` (default: the working directory): the nearest folder upwards with
    ``params/experiments/`` and a ``Snakefile``, or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params" / "experiments").is_dir() and (folder / "Snakefile").is_file():
            return folder
    return None


def params_dir() -> Path:
    """The params folder: ``$MAIR_PARAMS_DIR`` (the pipeline sets it to its own), else the ``params/`` of the
    checkout the working directory is in, else the installed package's checkout, else ``mair/resources/params``.

    With one environment and several checkouts, each checkout's commands read that checkout's experiments.
    """
    env = switches.get("MAIR_PARAMS_DIR")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise ExperimentError(f"MAIR_PARAMS_DIR={env!r} is not a directory")
        return path
    here = enclosing_checkout()
    if here is not None:
        return here / "params"
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent / "params"
    if (checkout / "experiments").is_dir():
        return checkout
    packaged = package / "resources" / "params"
    if packaged.is_dir():
        return packaged
    raise ExperimentError(
        f"no params folder found: set MAIR_PARAMS_DIR, or run from a checkout ({checkout}) "
        f"or an install that ships {packaged}"
    )


def experiments_dir() -> Path:
    """Folder of the experiment files."""
    return params_dir() / "experiments"


def schema_path() -> Path:
    """The JSON Schema of experiment files."""
    return params_dir() / "schema" / "experiment.schema.json"


def experiment_ids() -> list[str]:
    """Ids of the experiment files present, paper order first, then any others sorted."""
    folder = experiments_dir()
    found = {p.stem for p in folder.glob("*.yaml")} if folder.is_dir() else set()
    ordered = [i for i in PAPER_ORDER if i in found]
    return ordered + sorted(found - set(ordered))


# ------------------------------------------------------------------------------------------------ loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark)
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ExperimentError(f"{path}: cannot read: {error}") from error
    except UnicodeDecodeError as error:
        raise ExperimentError(
            f"{path}: not a UTF-8 text file (byte {error.start}: {error.reason}); experiment files are YAML in UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as error:
        raise ExperimentError(f"{path}: invalid YAML: {error}") from error


@functools.lru_cache(maxsize=4)
def _validator(path_text: str, mtime: float) -> Any:
    import jsonschema

    try:
        schema = json.loads(Path(path_text).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExperimentError(f"{path_text}: cannot load the experiment schema: {error}") from error
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    cls.check_schema(schema)
    return cls(schema)


def _schema_validator() -> Any:
    path = schema_path()
    if not path.is_file():
        raise ExperimentError(f"experiment schema missing: {path}")
    return _validator(str(path), path.stat().st_mtime)


def _json_path(parts: Iterator[Any] | list[Any]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


_JSON_TYPE = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def _describe(error: Any) -> str:
    """One line for a jsonschema error: JSON path, what was wrong, what was expected."""
    where = _json_path(list(error.absolute_path))
    schema, instance, kind = error.schema, error.instance, error.validator
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        unknown = sorted(k for k in instance if k not in allowed)
        paths = ", ".join(_json_path([*error.absolute_path, k]) for k in unknown)
        return f"{paths}: unknown key (expected one of: {', '.join(allowed)})"
    if kind == "required":
        missing = [k for k in error.validator_value if isinstance(instance, dict) and k not in instance]
        paths = ", ".join(_json_path([*error.absolute_path, k]) for k in missing)
        return f"{paths}: missing required key"
    got = f"{_JSON_TYPE.get(type(instance), type(instance).__name__)} {instance!r}"
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        hint = ""
        if isinstance(instance, str) and "number" in str(expected):
            try:
                float(instance)
                hint = " (YAML reads 1e-4 as text: write 1.0e-4)"
            except ValueError:
                pass
        return f"{where}: expected {expected}, got {got}{hint}"
    if kind == "enum":
        return f"{where}: expected one of {error.validator_value!r}, got {got}"
    if kind == "const":
        return f"{where}: expected {error.validator_value!r}, got {got}"
    if kind == "oneOf" and error.context:
        import jsonschema

        # "null or X": explain why it is not an X rather than why it is not null.
        real = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
        return _describe(jsonschema.exceptions.best_match(real or error.context))
    return f"{where}: {error.message}"


def _schema_problems(doc: Any) -> list[str]:
    import jsonschema

    errors = sorted(_schema_validator().iter_errors(doc), key=jsonschema.exceptions.relevance, reverse=True)
    lines: list[str] = []
    for error in errors:
        line = _describe(error)
        if line not in lines:
            lines.append(line)
    return lines


def _consistency_problems(doc: dict[str, Any], known_ids: list[str]) -> list[str]:
    """Cross-field rules that JSON Schema cannot say; run only on a schema-valid document."""
    problems: list[str] = []

    def bad(path: str, message: str) -> None:
        problems.append(f"{path}: {message}")

    arch, kwargs, train = doc["network"]["arch"], doc["network"]["kwargs"], doc["train"]
    scale = doc["scale"]
    task = TASKS[doc["task"]]
    if task.arch != arch:
        bad("$.network.arch", f"task {task.name} uses {task.arch}, got {arch}")
    if arch == "MaIR" and kwargs["upscale"] != scale:
        bad("$.network.kwargs.upscale", f"expected the experiment scale {scale}, got {kwargs['upscale']}")
    if arch == "MaIRUNet" and scale != 1:
        bad("$.scale", f"MaIRUNet restores at scale 1, got {scale}")
    patch = train["patch"]
    if patch["gt_size"] != patch["lq_size"] * scale:
        bad("$.train.patch", f"gt_size {patch['gt_size']} != lq_size {patch['lq_size']} x scale {scale}")
    if train["effective_batch"] != train["batch_per_gpu"] * train["gpus"]:
        expected = train["batch_per_gpu"] * train["gpus"]
        got = train["effective_batch"]
        bad("$.train.effective_batch", f"expected batch_per_gpu x gpus = {expected}, got {got}")
    if doc["scope"] == "paper" and doc["paper_gpus"] != train["gpus"]:
        bad("$.paper_gpus", f"expected train.gpus {train['gpus']}, got {doc['paper_gpus']}")
    if train["drop_path"]["rate"] != kwargs["drop_path_rate"]:
        bad("$.train.drop_path.rate", f"expected network.kwargs.drop_path_rate {kwargs['drop_path_rate']}")
    _schedule_problems(train, "$.train", bad)
    for where, block in (("$.val", doc["val"]), ("$.test", doc["test"])):
        if block["protocol"] != FAMILIES[arch].protocol:
            expected = FAMILIES[arch].protocol
            bad(f"{where}.protocol", f"{arch} is evaluated with {expected}, got {block['protocol']}")
    sigma = train["noise_sigma"]
    if task.training_pair == "synthetic_noise":
        if sigma is None:
            bad("$.train.noise_sigma", "colour denoising needs a noise sigma")
        for where in ("val", "test"):
            noise = doc[where]["noise"]
            if noise is None or noise["sigma"] != sigma:
                bad(f"$.{where}.noise", f"expected noise with sigma {sigma} (train.noise_sigma)")
    elif sigma is not None or doc["val"]["noise"] is not None or doc["test"]["noise"] is not None:
        noisy = ", ".join(t.name for t in TASKS.values() if t.training_pair == "synthetic_noise")
        bad("$.train.noise_sigma", f"synthetic noise is only for {noisy}, not {task.name}")
    init = train["init_from"]
    if init is not None:
        if known_ids and init["experiment"] not in known_ids:
            bad("$.train.init_from.experiment", f"unknown experiment {init['experiment']!r}")
        quirk = init["quirk"]
        if quirk is not None and init["experiment"] != quirk[quirk["default"]]:
            chosen = quirk["default"]
            bad(
                "$.train.init_from.experiment",
                f"expected quirk.{chosen} = {quirk[chosen]!r}, got {init['experiment']!r}",
            )
    complexity = doc["complexity"]
    if doc["scope"] == "paper":
        if complexity["params"] is None:
            bad("$.complexity.params", "expected the paper-scale parameter count")
        if (complexity["flops_g"] is None) != (complexity["flops_input_size"] is None):
            bad("$.complexity", "flops_g and flops_input_size go together")
        if doc["demo"] is None:
            bad("$.demo", "paper-scope experiments need a demo block")
        else:
            demo_kwargs = doc["demo"]["network_kwargs"]
            for key in _DEMO_KEEP[arch]:
                if demo_kwargs[key] != kwargs[key]:
                    bad(f"$.demo.network_kwargs.{key}", f"the demo keeps {kwargs[key]!r}, got {demo_kwargs[key]!r}")
    return problems


def _schedule_problems(train: dict[str, Any], where: str, bad: Any) -> None:
    total, sched = train["total_iter"], train["scheduler"]
    if sched["type"] == "MultiStepLR":
        ms = sched["milestones"]
        if any(b <= a for a, b in itertools.pairwise(ms)) or ms[-1] >= total:
            bad(f"{where}.scheduler.milestones", f"expected increasing milestones below total_iter {total}, got {ms}")
    else:
        lengths = {len(sched[k]) for k in ("periods", "restart_weights", "eta_mins")}
        if len(lengths) != 1:
            bad(f"{where}.scheduler", "periods, restart_weights and eta_mins must have the same length")
    prog = train["progressive"]
    if prog is not None:
        if len({len(prog[k]) for k in ("mini_batch_sizes", "gt_sizes", "iters")}) != 1:
            bad(f"{where}.progressive", "mini_batch_sizes, gt_sizes and iters must have the same length")
        if sum(prog["iters"]) != total:
            bad(f"{where}.progressive.iters", f"expected the sum {total}, got {sum(prog['iters'])}")
        if max(prog["gt_sizes"]) > train["patch"]["gt_size"]:
            bad(f"{where}.progressive.gt_sizes", f"sizes above patch.gt_size ({train['patch']['gt_size']})")
        if max(prog["mini_batch_sizes"]) > train["batch_per_gpu"]:
            bad(f"{where}.progressive.mini_batch_sizes", f"above batch_per_gpu ({train['batch_per_gpu']})")


def validate_experiment(doc: Any, source: str, known_ids: list[str] | None = None) -> dict[str, Any]:
    """Check ``doc`` against the schema and the cross-field rules; errors name ``source``."""
    problems = _schema_problems(doc)
    if not problems:
        problems = _consistency_problems(doc, experiment_ids() if known_ids is None else known_ids)
    if len(problems) == 1:  # one line on the terminal
        raise ExperimentError(f"{source}: invalid experiment: {problems[0]}")
    if problems:
        listed = "\n  ".join(problems)
        raise ExperimentError(f"{source}: invalid experiment:\n  {listed}")
    return doc


def _is_path(id_or_path: str | os.PathLike[str]) -> bool:
    if isinstance(id_or_path, os.PathLike):
        return True
    return id_or_path.endswith((".yaml", ".yml")) or "/" in id_or_path or os.sep in id_or_path


SCOPES = ("paper", "demo")


def load(id_or_path: str | os.PathLike[str], scope: str = "paper") -> Experiment:
    """The experiment ``id_or_path`` (an id of ``params/experiments/<id>.yaml``, or a file path) at ``scope``:
    validated, and for ``demo`` with its demo block applied (small network, few iterations)."""
    if scope not in SCOPES:
        raise ExperimentError(f"unknown scope {scope!r}; expected paper or demo")
    doc = read_document(id_or_path)
    if scope == "demo":
        doc = _demo_document(doc)
    return from_document(doc)


def read_document(id_or_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated paper-scope document of an experiment file, as a plain dict (see :func:`load`)."""
    if _is_path(id_or_path):
        path = Path(id_or_path)
        if not path.is_file():
            from mair.common.errors import not_a_file_reason

            reason = not_a_file_reason(path)
            raise ExperimentError(
                f"{path}: no such experiment file"
                if reason == "no such file"
                else f"{path} {reason}; expected an experiment YAML file"
            )
    else:
        known = experiment_ids()
        if id_or_path not in known:
            raise ExperimentError(f"unknown experiment {id_or_path!r}; known: {', '.join(known)}")
        path = experiments_dir() / f"{id_or_path}.yaml"
    doc = _read_yaml(path)
    validate_experiment(doc, str(path))
    if doc["scope"] != "paper":
        raise ExperimentError(f"{path}: $.scope: experiment files hold the paper scope, got {doc['scope']!r}")
    if not _is_path(id_or_path) and doc["id"] != id_or_path:
        raise ExperimentError(f"{path}: $.id: expected {id_or_path!r} (the file name), got {doc['id']!r}")
    return doc


def _demo_document(exp: dict[str, Any]) -> dict[str, Any]:
    """The document at demo scale: its ``demo`` block applied, ``scope: demo``, paper complexity cleared."""
    out = copy.deepcopy(exp)
    demo = out.pop("demo")
    out["scope"] = "demo"
    out["demo"] = None
    out["network"]["kwargs"] = demo["network_kwargs"]
    out["train"].update(demo["train"])
    out["val"].update(demo["val"])
    out["train"]["drop_path"]["rate"] = demo["network_kwargs"]["drop_path_rate"]
    out["complexity"] = dict.fromkeys(("params", "flops_input_size", "flops_g", "flops_mflops_per_pixel"))
    return validate_experiment(out, f"experiment {exp['id']!r} (demo scope)")
