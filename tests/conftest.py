import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors. The variable must be set before
# the kernels are defined (hyperfused imports them lazily, at the first use of backend="triton").
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_index_fix():
    """Triton 3.6's interpreter (torch 2.11 pins it) turns a scalar into an index with int() of a one-element
    array, which numpy >= 2.4 refuses (triton-lang/triton#9171; triton 3.9 has the fix, #9172): apply that fix."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    patch = getattr(interpreter, "_patch_lang_tensor", None)
    if patch is None or getattr(patch, "_hyperfused_fixed", False):
        return

    def patched(tensor, scope):
        patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._hyperfused_fixed = True
    interpreter._patch_lang_tensor = patched


_interpreter_index_fix()


@pytest.fixture
def float64_default():
    """The paper's package builds its hyperparameters with torch's default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
