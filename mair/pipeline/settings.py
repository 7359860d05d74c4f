"""The pipeline settings: params/pipeline.yaml, ``--config`` overrides typed by the schema, one-paragraph
validation errors, and the weight source (``weights: trained|published``) that names the results folder."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class PipelineError(ValueError):
    """A pipeline setting that cannot work (the message says which and why)."""


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


def load_pipeline_config(path: str | os.PathLike[str] = "params/pipeline.yaml") -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}
