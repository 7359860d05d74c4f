"""Evaluation: the paper's metrics and test protocol, the evaluation runner, DND bundles and ``mair restore``.

* :mod:`mair.evaluate.metrics`: PSNR/SSIM exactly as the official code (top level and realDenoising).
* :mod:`mair.evaluate.protocol`: the official tiling, MaIR+ self-ensemble, padding to 8, user tiling.
* :mod:`mair.evaluate.noise`: the official colour-denoising test noise.
* :mod:`mair.evaluate.runner`: ``mair evaluate`` (per-image CSV, summary JSON, resumable).
* :mod:`mair.evaluate.dnd`: the DND benchmark submission bundle.
* :mod:`mair.evaluate.restore`: ``mair restore`` on your own images.

Importing this package is cheap (no torch); import the submodules you need.
"""
