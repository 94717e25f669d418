"""Kernel tests run the Triton kernels through Triton's interpreter where no CUDA GPU is present.

``triton.jit`` decides between compiling and interpreting when a function is *defined*, and Triton
defines its own jit helpers (``tl.sum``, ...) when it is first imported. So ``TRITON_INTERPRET=1``
must be set before anything imports triton -- and bitsandbytes imports it, as do our op modules. This
file sets it when pytest starts here; if another directory's test modules imported triton first
(a whole-tree run), the CPU cases fail with a message saying how to fix the ordering instead of
erroring deep inside the interpreter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The test modules import their shared helpers (kernel_testing.py) from this directory, whatever
# pytest's import mode puts on sys.path.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

_TRITON_IMPORTED_COMPILED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_TOO_LATE = (
    "triton was imported (e.g. by bitsandbytes) before tests/kernels/conftest.py could set "
    "TRITON_INTERPRET=1, so its kernels are compiled, not interpreted. Run with TRITON_INTERPRET=1 in "
    "the environment, or set it at the top of tests/conftest.py when CUDA is absent."
)


def _interpreter_accepts_runtime_loop_bounds() -> None:
    """Let Triton 3.6's interpreter take ``range(a, b)`` with runtime bounds under numpy >= 2.4.

    The interpreter holds every scalar as a 1-element array and turns it into a Python int with
    ``int(array)``, which numpy 2.4 rejects for non-0-d arrays; kernels then fail only when
    interpreted. This wraps the interpreter's per-launch patch of ``tl.tensor`` (test processes only)
    so ``__index__`` reads the single element; it does nothing with older numpy.
    """
    import numpy as np

    try:
        int(np.array([1]))
        return
    except TypeError:
        pass
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_loris_wrapped", False):
        return

    def patch_lang_tensor(tensor: type, scope: interpreter._LangPatchScope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor._loris_wrapped = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patch_lang_tensor


if os.environ.get("TRITON_INTERPRET") == "1":
    _interpreter_accepts_runtime_loop_bounds()


@pytest.fixture(autouse=True)
def _interpreter_in_effect(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    on_cpu = callspec is not None and callspec.params.get("device") == "cpu"
    if on_cpu and _TRITON_IMPORTED_COMPILED:
        pytest.fail(_TOO_LATE)


@pytest.fixture
def bf16_rounds_to_nearest(monkeypatch):
    """Triton 3.6's interpreter truncates fp32 -> bf16 casts, where GPUs round to nearest even; this
    makes it round as the GPU (and torch) does, so the kernel's rounding steps can be checked."""
    import triton.language as tl
    from triton.runtime import interpreter

    original = interpreter._convert_float

    def convert(data, input_dtype, output_dtype, rounding_mode):
        if input_dtype == tl.float32 and output_dtype == tl.bfloat16:
            x = torch.from_numpy(np.ascontiguousarray(data).view(np.float32).copy())
            return x.bfloat16().view(torch.int16).numpy().view(np.uint16)
        return original(data, input_dtype, output_dtype, rounding_mode)

    monkeypatch.setattr(interpreter, "_convert_float", convert)
