"""The dataset catalog ``params/datasets.yaml``: every training and test set of the paper, as data.

:func:`load_catalog` reads it, checks its structure (JSON schema plus cross-field rules) and returns a
:class:`Catalog` of :class:`Dataset` entries. Errors name the file and the key, e.g.
``params/datasets.yaml: datasets.div2k.files[0].sha256: 'xyz' does not match '^[0-9a-f]{64}$'``.

The catalog is found like the experiments: ``load_catalog(path)`` if given, else
``$MAIR_PARAMS_DIR/datasets.yaml``, else ``params/datasets.yaml`` of the repository.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CATALOG_FILE = "datasets.yaml"
ROLES = ("train", "test", "val")
ACCESS = ("open", "gdrive", "login", "manual")
FORMATS = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz", "rar", "file")
DEFAULT_SOURCE = "default"

_SAFE_NAME = r"^(?!/)(?!.*(^|/)\.\.?(/|$))(?!.*//)(?!.*\\)[^\x00-\x1f]+(?<!/)$"

_FILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "urls"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": _SAFE_NAME},
        "urls": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^(https?://\S+|gdrive:[A-Za-z0-9_-]+)$"},
        },
        "size": {"type": ["integer", "null"], "minimum": 0},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        "sha1": {"type": ["string", "null"], "pattern": "^[0-9a-f]{40}$"},
        "md5": {"type": ["string", "null"], "pattern": "^[0-9a-f]{32}$"},
        "format": {"enum": list(FORMATS)},
        "note": {"type": "string"},
    },
}

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema_version", "datasets"],
    "properties": {
        "schema_version": {"const": 1},
        "datasets": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": r"^[a-z0-9][a-z0-9_]*$"},
            "additionalProperties": {
                "type": "object",
                "required": ["name", "role", "tasks", "access", "licence", "files", "prepared_layout"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "role": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": True,
                        "items": {"enum": list(ROLES)},
                    },
                    "tasks": {
                        "type": "array",
                        "minItems": 1,
                        "uniqueItems": True,
                        "items": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_]*$"},
                    },
                    "homepage": {"type": ["string", "null"]},
                    "access": {"enum": list(ACCESS)},
                    "licence": {"type": "string", "minLength": 1},
                    "derived_from": {"type": "array", "items": {"type": "string"}},
                    "files": {"type": "array", "items": _FILE_SCHEMA},
                    "alternatives": {
                        "type": "object",
                        "propertyNames": {
                            "pattern": r"^[a-z0-9][a-z0-9_]*$",
                            "not": {"const": DEFAULT_SOURCE},
                        },
                        "additionalProperties": {
                            "type": "object",
                            "required": ["description", "files"],
                            "additionalProperties": False,
                            "properties": {
                                "description": {"type": "string"},
                                "files": {"type": "array", "minItems": 1, "items": _FILE_SCHEMA},
                                "verified": {"type": "boolean"},
                            },
                        },
                    },
                    "manual": {
                        "type": "object",
                        "required": ["instructions"],
                        "additionalProperties": False,
                        "properties": {
                            "instructions": {"type": "string", "minLength": 1},
                            "accept_any_files": {"type": "boolean"},
                        },
                    },
                    "prepared_layout": {
                        "type": "object",
                        "minProperties": 1,
                        "additionalProperties": {"type": ["integer", "null"], "minimum": 0},
                    },
                    "source_counts": {
                        "type": "object",
                        "additionalProperties": {"type": ["integer", "null"]},
                    },
                    "checksum_sources": {"type": "array", "items": {"type": "string"}},
                    "other_copies": {"type": "array", "items": {"type": "string"}},
                    "notes": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}


class CatalogError(ValueError):
    """The catalog file is missing or malformed; the message names the file and the key."""


def infer_format(name: str) -> str:
    """The archive format implied by a file name (``file`` when it is not an archive)."""
    lower = name.lower()
    for suffixes, fmt in (
        ((".tar.gz", ".tgz"), "tar.gz"),
        ((".tar.bz2", ".tbz2", ".tbz"), "tar.bz2"),
        ((".tar.xz", ".txz"), "tar.xz"),
        ((".tar",), "tar"),
        ((".zip",), "zip"),
        ((".rar",), "rar"),
    ):
        if lower.endswith(suffixes):
            return fmt
    return "file"


@dataclass(frozen=True)
class FileSpec:
    """One file to fetch: its name under ``raw/<id>/``, where to get it, and what it must hash to."""

    name: str
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    sha1: str | None = None
    md5: str | None = None
    format: str = "file"
    note: str | None = None

    @property
    def checksum_known(self) -> bool:
        """True when the catalog publishes a checksum (sha256, sha1 or md5) for this file."""
        return bool(self.sha256 or self.sha1 or self.md5)

    @property
    def is_archive(self) -> bool:
        """True for zip/tar/rar files (they are extracted), False for plain files (linked as they are)."""
        return self.format != "file"


@dataclass(frozen=True)
class Source:
    """A complete set of files that provides a dataset: the catalog's default or a named alternative."""

    name: str
    description: str
    files: tuple[FileSpec, ...]
    verified: bool = True


@dataclass(frozen=True)
class Dataset:
    """One catalog entry (see docs/data.md for every field)."""

    id: str
    name: str
    roles: tuple[str, ...]
    tasks: tuple[str, ...]
    access: str
    licence: str
    homepage: str | None
    files: tuple[FileSpec, ...]
    alternatives: dict[str, Source] = field(default_factory=dict)
    derived_from: tuple[str, ...] = ()
    manual_instructions: str | None = None
    accept_any_files: bool = False
    prepared_layout: dict[str, int | None] = field(default_factory=dict)
    source_counts: dict[str, int | None] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_derived(self) -> bool:
        """True for sets built from other sets (df2k, dfwb): they have no files of their own."""
        return bool(self.derived_from)

    @property
    def is_manual(self) -> bool:
        """True when the files must be fetched by hand (login/licence form, or no direct file link)."""
        return self.access in ("login", "manual")

    def sources(self) -> dict[str, Source]:
        """The default source followed by the alternatives, by name."""
        default = Source(DEFAULT_SOURCE, "the catalog's default files", self.files)
        return {DEFAULT_SOURCE: default, **self.alternatives}

    def source(self, name: str | None) -> Source:
        """The source called ``name`` (``None`` or ``default``: the default files)."""
        sources = self.sources()
        key = name or DEFAULT_SOURCE
        if key not in sources:
            raise KeyError(f"{self.id} has no source {key!r}; known: {', '.join(sources)}")
        return sources[key]

    def all_files(self) -> list[FileSpec]:
        """Every file of every source."""
        return [spec for source in self.sources().values() for spec in source.files]

    def file_spec(self, name: str) -> FileSpec | None:
        """The catalog entry of file ``name`` in any source, or None."""
        return next((spec for spec in self.all_files() if spec.name == name), None)

    @property
    def checksums_known(self) -> bool:
        """True when every default file has a published checksum."""
        return bool(self.files) and all(spec.checksum_known for spec in self.files)

    @property
    def total_size(self) -> int | None:
        """Total bytes of the default files, or None when a size is unknown."""
        if not self.files or any(spec.size is None for spec in self.files):
            return None
        return sum(spec.size or 0 for spec in self.files)

    @property
    def expected_total(self) -> int | None:
        """Sum of the expected image counts of the prepared layout, or None when any is unknown."""
        values = list(self.prepared_layout.values())
        return None if any(v is None for v in values) else sum(v or 0 for v in values)


@dataclass(frozen=True)
class Catalog:
    """All datasets of a catalog file, by id, in file order."""

    path: Path
    datasets: dict[str, Dataset]

    def ids(self) -> list[str]:
        """Dataset ids in catalog order."""
        return list(self.datasets)

    def get(self, dataset_id: str) -> Dataset:
        """The dataset ``dataset_id``; ``KeyError`` with the known ids when it is not in the catalog."""
        try:
            return self.datasets[dataset_id]
        except KeyError:
            raise KeyError(
                f"unknown dataset {dataset_id!r} (catalog {self.path}); known: {', '.join(self.datasets)}"
            ) from None

    def __contains__(self, dataset_id: object) -> bool:
        return dataset_id in self.datasets

    def __iter__(self) -> Iterator[Dataset]:
        return iter(self.datasets.values())

    def expand(self, dataset_ids: list[str]) -> list[str]:
        """Replace derived sets by the sets they are built from (order kept, no duplicates)."""
        out: list[str] = []
        for dataset_id in dataset_ids:
            dataset = self.get(dataset_id)
            for sub in dataset.derived_from or (dataset_id,):
                if sub not in out:
                    out.append(sub)
        return out


def params_dir() -> Path:
    """The params folder, resolved exactly as for the experiments (:func:`mair.experiments.params_dir`)."""
    from mair.experiments import ExperimentError
    from mair.experiments import params_dir as _experiments_params_dir

    try:
        return _experiments_params_dir()
    except ExperimentError as error:
        raise CatalogError(str(error)) from None


def default_catalog_path() -> Path:
    """Where :func:`load_catalog` looks without an explicit path."""
    return params_dir() / CATALOG_FILE


def _key_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _validate_schema(data: Any, where: Path) -> None:
    import jsonschema

    validator = jsonschema.Draft202012Validator(_SCHEMA)
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        lines = [f"{where}: {_key_path(e.absolute_path)}: {e.message}" for e in errors[:20]]
        if len(errors) > 20:
            lines.append(f"{where}: ... and {len(errors) - 20} more errors")
        raise CatalogError("\n".join(lines))


def _file_spec(raw: dict[str, Any]) -> FileSpec:
    return FileSpec(
        name=raw["name"],
        urls=tuple(raw.get("urls") or ()),
        size=raw.get("size"),
        sha256=raw.get("sha256"),
        sha1=raw.get("sha1"),
        md5=raw.get("md5"),
        format=raw.get("format") or infer_format(raw["name"]),
        note=raw.get("note"),
    )


def _check_dataset(dataset: Dataset, ids: set[str], where: Path) -> None:
    key = f"{where}: datasets.{dataset.id}"
    names = [spec.name for spec in dataset.all_files()]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CatalogError(f"{key}: file names must be unique across all sources; repeated: {duplicates}")
    for name in names:
        if name.endswith(".part") or name.startswith(".") or "/." in name:
            raise CatalogError(f"{key}: file name {name!r} may not be hidden or end in .part")
    if dataset.is_derived:
        if dataset.files:
            raise CatalogError(f"{key}.files: a derived set (derived_from) has no files of its own")
        for sub in dataset.derived_from:
            if sub not in ids:
                raise CatalogError(f"{key}.derived_from: unknown dataset {sub!r}")
            if sub == dataset.id:
                raise CatalogError(f"{key}.derived_from: a set cannot be derived from itself")
        return
    if dataset.is_manual:
        if not dataset.manual_instructions:
            raise CatalogError(f"{key}.manual.instructions: required when access is {dataset.access!r}")
        if not dataset.files and not dataset.accept_any_files:
            raise CatalogError(f"{key}.files: list the expected files or set manual.accept_any_files")
        return
    if not dataset.files:
        raise CatalogError(f"{key}.files: an {dataset.access!r} dataset needs at least one file")
    for index, spec in enumerate(dataset.files):
        if not spec.urls:
            raise CatalogError(f"{key}.files[{index}].urls: an {dataset.access!r} file needs at least one URL")
    if dataset.access == "gdrive" and not any(u.startswith("gdrive:") for s in dataset.files for u in s.urls):
        raise CatalogError(f"{key}.access: 'gdrive' but no file has a gdrive:<id> URL")


def parse_catalog(data: Any, where: Path) -> Catalog:
    """Validate already-loaded YAML ``data`` (from ``where``) and build the :class:`Catalog`."""
    _validate_schema(data, where)
    datasets: dict[str, Dataset] = {}
    for dataset_id, entry in data["datasets"].items():
        manual = entry.get("manual") or {}
        alternatives = {
            name: Source(
                name=name,
                description=alt["description"],
                files=tuple(_file_spec(f) for f in alt["files"]),
                verified=bool(alt.get("verified", False)),
            )
            for name, alt in (entry.get("alternatives") or {}).items()
        }
        datasets[dataset_id] = Dataset(
            id=dataset_id,
            name=entry["name"],
            roles=tuple(entry["role"]),
            tasks=tuple(entry["tasks"]),
            access=entry["access"],
            licence=entry["licence"],
            homepage=entry.get("homepage"),
            files=tuple(_file_spec(f) for f in entry["files"]),
            alternatives=alternatives,
            derived_from=tuple(entry.get("derived_from") or ()),
            manual_instructions=manual.get("instructions"),
            accept_any_files=bool(manual.get("accept_any_files", False)),
            prepared_layout=dict(entry["prepared_layout"]),
            source_counts=dict(entry.get("source_counts") or {}),
            notes=tuple(entry.get("notes") or ()),
            raw=entry,
        )
    ids = set(datasets)
    for dataset in datasets.values():
        _check_dataset(dataset, ids, where)
    for dataset in datasets.values():
        for sub in dataset.derived_from:
            if datasets[sub].is_derived:
                raise CatalogError(f"{where}: datasets.{dataset.id}.derived_from: {sub!r} is itself derived")
    return Catalog(path=where, datasets=datasets)


def load_catalog(path: str | os.PathLike[str] | None = None) -> Catalog:
    """Load and validate the catalog at ``path`` (default: :func:`default_catalog_path`)."""
    where = Path(path) if path is not None else default_catalog_path()
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"{where}: catalog file not found (set MAIR_PARAMS_DIR or pass a path)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogError(f"{where}: not valid YAML: {error}") from error
    return parse_catalog(data, where)
