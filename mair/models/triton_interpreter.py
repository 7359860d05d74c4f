"""Adjustments to Triton 3.6's CPU interpreter, which the CI tests run the kernels in (``TRITON_INTERPRET=1``);
GPU runs are unaffected. Every module of Triton kernels calls :func:`adapt_interpreter` at import."""

from __future__ import annotations

import os


def _adapt() -> None:
    """Three adjustments to Triton 3.6's CPU interpreter.

    * It turns loop bounds into Python ints with ``int(array)``, which NumPy 2 refuses for its 1-element 1-D
      scalars: take ``.item()`` instead.
    * Its generic ``associative_scan`` calls the combine function once per tile element in Python; apply it
      to whole slices along the scan axis instead (same order of combination, far fewer calls).
    * Every call of a ``@triton.jit`` helper inside a kernel patches ``triton.language`` again, although the
      running kernel launch has already patched those same modules (a second patch finds nothing left to
      replace and only re-creates wrappers): skip it there. It was about a third of the interpreter's time in
      the model-level tests, whose kernels call small helpers at every sequence position.
    """
    import functools
    import inspect

    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_mair_adapted", False):
        return

    def patch_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    def sliced_scan(self, inputs):
        data = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in inputs]
        outs = [np.empty_like(d) for d in data]
        for out, d in zip(outs, data, strict=True):
            out[0] = d[0]
        for i in range(1, data[0].shape[0]):
            acc = tuple(self.to_tensor(o[i - 1], arg.dtype) for o, arg in zip(outs, inputs, strict=True))
            cur = tuple(self.to_tensor(d[i], arg.dtype) for d, arg in zip(data, inputs, strict=True))
            ret = self.combine_fn.fn(*acc, *cur)
            ret = ret if isinstance(ret, tuple) else (ret,)
            for out, r in zip(outs, ret, strict=True):
                out[i] = r.handle.data
        return [self.to_tensor(np.moveaxis(o, 0, self.axis), arg.dtype) for o, arg in zip(outs, inputs, strict=True)]

    # The language modules (ids) patched since the running kernel launch began: the kernel's own (``tl``) and
    # those of helpers from other modules (Triton's own, e.g. ``tl.sum``, see ``tl.core``). A kernel cannot
    # launch another, so one set per launch on a stack is enough.
    launches: list[set[int]] = []
    real_patch_lang, real_launch = interpreter._patch_lang, interpreter.GridExecutor.__call__

    @functools.cache
    def lang_modules(fn) -> frozenset[int]:  # per function: its module's globals, read once
        return frozenset(id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core))

    def patch_lang(fn):
        langs = lang_modules(fn)
        if launches and launches[-1] and langs <= launches[-1]:
            return interpreter._LangPatchScope()  # a helper call: its modules are patched already
        scope = real_patch_lang(fn)
        if launches:
            launches[-1] |= langs
        return scope

    def launch(self, *args, **kwargs):
        launches.append(set())
        try:
            return real_launch(self, *args, **kwargs)
        finally:
            launches.pop()

    patch_tensor._mair_adapted = True
    interpreter._patch_lang_tensor = patch_tensor
    interpreter.ScanOps.generic_scan = sliced_scan
    interpreter._patch_lang = patch_lang
    interpreter.GridExecutor.__call__ = launch


def adapt_interpreter() -> None:
    """Apply the adjustments when Triton runs in its CPU interpreter (once; no-op otherwise)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        _adapt()
