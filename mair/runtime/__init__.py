"""What runs on this machine: the environment switches read in one place (``switches``), the resolved runtime of a
command (``resolve``: scan backend, precision, compile mode, optimizer; the fast default on CUDA and ``--exact``),
the matmul precision (``precision``), ``torch.compile`` modes (``compile_modes``) and the persistent compile cache
(``compile_cache``)."""
