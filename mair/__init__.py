"""MaIR: a locality- and continuity-preserving Mamba for image restoration.

``import mair`` needs neither mamba_ssm nor a GPU. Models live in :mod:`mair.models`, the selective scan in
:mod:`mair.models.scan`, the pipeline steps in :mod:`mair.data`, :mod:`mair.train`, :mod:`mair.evaluate` and
:mod:`mair.report`; the ``mair`` command is :mod:`mair.cli`.
"""

__version__ = "0.1.0"
