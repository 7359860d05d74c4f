"""A persistent per-user folder for the compilers' caches, so that a compile is paid once per machine.

``torch.compile`` (Inductor: FX graphs, AOTAutograd graphs, generated kernels) and Triton (our scan and
convolution kernels, and the kernels Inductor generates) cache what they build on disk. Inductor's default
folder is under ``/tmp`` (often wiped, and per node on clusters); so a resumed or retried training, the next
experiment of the same network and the evaluation after training would compile again. :func:`setup` points
both at one folder that outlives the process:

* ``$MAIR_COMPILE_CACHE`` when set, else ``$XDG_CACHE_HOME/mair/compile``, else ``~/.cache/mair/compile``;
* Inductor's cache in ``<root>/inductor`` (``TORCHINDUCTOR_CACHE_DIR``), Triton's in ``<root>/triton``
  (``TRITON_CACHE_DIR``). A variable that is already set is left as it is (except when it holds Inductor's own
  ``/tmp`` default, which Inductor puts into the environment by itself).

Set in the environment, the folders reach every process started afterwards (torchrun workers, Snakemake jobs).
:func:`setup` must run before the first compile; the compilers read the variables when they first need them.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from mair.runtime import switches

ENV_VAR = "MAIR_COMPILE_CACHE"
INDUCTOR_VAR = "TORCHINDUCTOR_CACHE_DIR"
TRITON_VAR = "TRITON_CACHE_DIR"

__all__ = ["ENV_VAR", "INDUCTOR_VAR", "TRITON_VAR", "CompileCache", "default_root", "setup"]


@dataclass(frozen=True)
class CompileCache:
    """Where the compilers' caches are, and whether each folder was chosen here or already set."""

    root: Path
    inductor: Path
    triton: Path
    inductor_preset: bool  # TORCHINDUCTOR_CACHE_DIR was set before setup
    triton_preset: bool  # TRITON_CACHE_DIR was set before setup

    def describe(self) -> str:
        """One line for logs."""

        def where(path: Path, preset: bool, var: str) -> str:
            return f"{path}" + (f" (from {var})" if preset else "")

        return (
            f"compile cache: Inductor {where(self.inductor, self.inductor_preset, INDUCTOR_VAR)}, "
            f"Triton {where(self.triton, self.triton_preset, TRITON_VAR)}"
        )


def default_root(environ: MutableMapping[str, str] | None = None) -> Path:
    """``$MAIR_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/mair/compile``, else ``~/.cache/mair/compile``."""
    root = switches.get(ENV_VAR, environ)
    if root is not None:
        return Path(root).expanduser()
    env = os.environ if environ is None else environ
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "mair" / "compile"


def _is_inductor_default(value: str) -> bool:
    """Whether ``value`` is Inductor's own ``/tmp`` default, which Inductor writes into the environment itself
    (registering custom ops does so), so that it cannot be told from a user's choice otherwise."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return False
    return os.path.abspath(value) == os.path.abspath(default_cache_dir())


def setup(environ: MutableMapping[str, str] | None = None) -> CompileCache:
    """Point Inductor and Triton at the persistent folders (variables already set are kept); create them."""
    env = os.environ if environ is None else environ
    root = default_root(env)
    inductor_preset = bool(env.get(INDUCTOR_VAR)) and not _is_inductor_default(env[INDUCTOR_VAR])
    triton_preset = bool(env.get(TRITON_VAR))
    if not inductor_preset:
        env[INDUCTOR_VAR] = str(root / "inductor")
    if not triton_preset:
        env[TRITON_VAR] = str(root / "triton")
    inductor, triton = Path(env[INDUCTOR_VAR]), Path(env[TRITON_VAR])
    for folder in (inductor, triton):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return CompileCache(root, inductor, triton, inductor_preset, triton_preset)
