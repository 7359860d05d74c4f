"""The catalog of published checkpoints ``params/weights.yaml``: one file per experiment and where it is published.

:func:`load_weights_catalog` validates it (JSON schema, then: every key is an experiment of
``params/experiments/``, file names are unique plain names) and returns a :class:`WeightsCatalog`. Errors name
the file and the key, like the datasets catalog's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mair.data.catalog import CatalogError, params_dir

WEIGHTS_CATALOG_FILE = "weights.yaml"

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema_version", "source", "weights"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"const": 1},
        "source": {
            "type": "object",
            "required": ["name", "gdrive_folder"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "gdrive_folder": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{10,}$"},
            },
        },
        "weights": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": r"^[a-z0-9][a-z0-9_]*$"},
            "additionalProperties": {
                "type": "object",
                "required": ["file"],
                "additionalProperties": False,
                "properties": {
                    # a plain file name: no folder, not hidden, not a partial download
                    "file": {"type": "string", "pattern": r"^(?!\.)(?!.*\.part$)[A-Za-z0-9._+-]+$"},
                    "gdrive_id": {"type": ["string", "null"], "pattern": r"^[A-Za-z0-9_-]{10,}$"},
                    "size": {"type": ["integer", "null"], "minimum": 1},
                    "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
                },
            },
        },
    },
}


@dataclass(frozen=True)
class PublishedWeights:
    """One experiment's published checkpoint."""

    experiment: str
    file: str
    gdrive_id: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class WeightsCatalog:
    """Every published checkpoint, by experiment id, in catalog order."""

    path: Path
    source_name: str
    gdrive_folder: str
    entries: dict[str, PublishedWeights]

    def ids(self) -> list[str]:
        return list(self.entries)

    def get(self, experiment: str) -> PublishedWeights:
        """The entry of ``experiment``; ``KeyError`` naming the known ids otherwise."""
        try:
            return self.entries[experiment]
        except KeyError:
            raise KeyError(
                f"no published weights for {experiment!r} in {self.path}; known: {', '.join(self.entries)}"
            ) from None

    def by_file(self, name: str) -> PublishedWeights | None:
        """The entry whose published file is called ``name``, or None."""
        return next((e for e in self.entries.values() if e.file == name), None)

    @property
    def folder_url(self) -> str:
        from mair.data.gdrive import FOLDER_URL

        return FOLDER_URL.format(id=self.gdrive_folder)


def default_weights_catalog_path() -> Path:
    """``params/weights.yaml`` of the params folder (``$MAIR_PARAMS_DIR`` or the checkout's ``params/``)."""
    return params_dir() / WEIGHTS_CATALOG_FILE


def _key_path(parts: Any) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def parse_weights_catalog(data: Any, where: Path, known_experiments: list[str] | None = None) -> WeightsCatalog:
    """Validate already-loaded YAML ``data`` (from ``where``) and build the :class:`WeightsCatalog`."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        raise CatalogError("\n".join(f"{where}: {_key_path(e.absolute_path)}: {e.message}" for e in errors[:20]))
    if known_experiments is None:
        from mair.experiments import experiment_ids

        known_experiments = experiment_ids()
    entries: dict[str, PublishedWeights] = {}
    seen: dict[str, str] = {}
    for exp, raw in data["weights"].items():
        if exp not in known_experiments:
            raise CatalogError(
                f"{where}: weights.{exp}: not an experiment of params/experiments/ "
                f"(known: {', '.join(known_experiments)})"
            )
        if raw["file"] in seen:
            raise CatalogError(
                f"{where}: weights.{exp}.file: {raw['file']!r} is already the file of {seen[raw['file']]}"
            )
        seen[raw["file"]] = exp
        entries[exp] = PublishedWeights(exp, raw["file"], raw.get("gdrive_id"), raw.get("size"), raw.get("sha256"))
    source = data["source"]
    return WeightsCatalog(where, source["name"], source["gdrive_folder"], entries)


def load_weights_catalog(path: str | os.PathLike[str] | None = None) -> WeightsCatalog:
    """Load and validate the catalog at ``path`` (default: :func:`default_weights_catalog_path`)."""
    where = Path(path) if path is not None else default_weights_catalog_path()
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{where}: weights catalog not found (set MAIR_PARAMS_DIR or pass a path)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogError(f"{where}: not valid YAML: {error}") from None
    return parse_weights_catalog(data, where)
