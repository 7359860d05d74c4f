"""Data: the dataset catalog, verified downloads, safe extraction and the prepared layouts.

* :mod:`mair.data.catalog` reads ``params/datasets.yaml`` (every dataset: URLs, mirrors, checksums, layouts);
* :mod:`mair.data.download` fetches and verifies files into ``<data root>/raw/<id>/`` (resume, retries,
  mirrors, Google Drive, manual sets, ``mair data add``);
* :mod:`mair.data.extract` unpacks archives safely into ``extracted/<id>/``;
* :mod:`mair.data.lockfile` keeps ``data.lock.json`` (checksums recorded by first downloads);
* :mod:`mair.data.paths` says where everything lives (``prepared_dir(id, scope)``);
* :mod:`mair.data.cli` is the ``mair data`` command. See docs/data.md.

Importing this package is cheap (no torch, no network).
"""

from mair.data.paths import data_dir, extracted_dir, is_prepared, prepared_dir, raw_dir

__all__ = ["data_dir", "extracted_dir", "is_prepared", "prepared_dir", "raw_dir"]
