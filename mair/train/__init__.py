"""Training of the paper's experiments: datasets, sampler, schedules, losses, progressive training, the trainer,
torchrun launching and the ``mair train`` command (docs/training.md).

Importing this package is cheap; the submodules import torch.
"""

__all__ = ["EXIT_STOPPED"]

#: Exit status of a run stopped by SIGTERM / SIGUSR1 after writing its checkpoint (EX_TEMPFAIL): requeue it.
EXIT_STOPPED = 75
