"""Paper experiments as data: ``params/experiments/<id>.yaml``, validated against ``params/schema``.

Each file holds everything the official train and test ymls held, in explicit form (docs/experiments.md).
:func:`load` is the one way to get an experiment: ``load("sr_classic_x2", scope="demo")`` reads and validates
the file and returns a frozen, typed :class:`Experiment` (:mod:`mair.experiments.spec`); every module takes its
fields from it. Errors are :class:`ExperimentError`, one line naming the file and the key.
"""

from mair.experiments.load import (
    PAPER_ORDER,
    SCOPES,
    ExperimentError,
    enclosing_checkout,
    experiment_ids,
    experiments_dir,
    load,
    params_dir,
    read_document,
    schema_path,
    validate_experiment,
)
from mair.experiments.spec import DatasetRef, Experiment, TestDatasetRef

__all__ = [
    "PAPER_ORDER",
    "SCOPES",
    "DatasetRef",
    "Experiment",
    "ExperimentError",
    "TestDatasetRef",
    "enclosing_checkout",
    "experiment_ids",
    "experiments_dir",
    "load",
    "params_dir",
    "read_document",
    "schema_path",
    "validate_experiment",
]
