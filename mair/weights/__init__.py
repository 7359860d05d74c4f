"""The published MaIR checkpoints: their catalog (``params/weights.yaml``), where they live under the data root,
and ``mair weights`` (list, status, download, add, forget). docs/evaluation.md, "Published weights"."""
