"""``mair bench``: the training and inference workloads it times (``workloads``) and its command line (``cli``).
The numbers it produced are in docs/benchmarks.md."""
