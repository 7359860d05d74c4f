"""The ``torch.compile`` modes offered by ``mair train`` and ``mair bench`` (importing this needs no torch)."""

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes in which Inductor replays CUDA graphs
