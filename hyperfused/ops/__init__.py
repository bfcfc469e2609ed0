"""Op layer: one Python entry per op. It picks the backend, validates inputs and calls the kernel.

The optimizers call only these entries; they know nothing about backends.
"""
from __future__ import annotations

from typing import List

import torch

from . import _ext, agd, reference
from . import triton as _triton
from .agd import power_iteration
from ._ext import cuda_extension_available, extension_available, load_extension

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
IMPLEMENTED_BACKENDS = ("reference", "cpu", "cuda", "triton")


def triton_available() -> bool:
    """Triton is importable, so backend='triton' can run (on CUDA tensors, or CPU tensors under
    TRITON_INTERPRET=1)."""
    return _triton.available()


def resolve_backend(backend: str) -> str:
    """Map a user's ``backend=`` choice to the backend that will run, or raise a clear error."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "auto"        # chosen per param group: the C++ kernels for CPU tensors when built
    if backend == "cpu" and not extension_available():
        raise RuntimeError(f"backend='cpu' needs the compiled extension hyperfused._C, which did not load "
                           f"({_ext.extension_error()}); build it with `pip install --no-build-isolation -e .`")
    if backend == "cuda" and not cuda_extension_available():
        raise NotImplementedError(
            "backend='cuda' needs the CUDA extension hyperfused._C_cuda, which is not built here "
            f"({_ext.cuda_extension_error()}); build with a CUDA build of torch and CUDA_HOME set "
            "(HYPERFUSED_CUDA=1 pip install --no-build-isolation -e .)")
    if backend == "triton" and not _triton.available():
        raise RuntimeError(f"backend='triton' needs the triton package, which did not import ({_triton.error()}); "
                           f"install it with `pip install triton`")
    if backend not in IMPLEMENTED_BACKENDS:
        raise NotImplementedError(
            f"backend={backend!r} is not implemented yet in this version of hyperfused; "
            f"use backend='auto', 'cpu' or 'reference'")
    return backend


def multi_tensor_dot(a: List[torch.Tensor], b: List[torch.Tensor]) -> torch.Tensor:
    """Deterministic per-pair dot products ``sum(a[i] * b[i])`` in float64, one value per pair.

    Runs the op ``torch.ops.hyperfused.multi_tensor_dot`` when its kernel is built for the tensors' device
    (the C++ extension for CPU, the CUDA extension for CUDA), the pure-PyTorch reference otherwise.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"multi_tensor_dot: got {len(a)} tensors in a and {len(b)} in b")
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape:
            raise ValueError(f"multi_tensor_dot: pair {i} has shapes {tuple(x.shape)} and {tuple(y.shape)}")
    on_cpu = all(t.device.type == "cpu" for t in a + b)
    on_cuda = all(t.device.type == "cuda" for t in a + b)
    if (on_cpu and extension_available()) or (on_cuda and cuda_extension_available()):
        load_extension()
        return torch.ops.hyperfused.multi_tensor_dot(a, b)
    return reference.multi_tensor_dot(a, b)


__all__ = ["BACKENDS", "resolve_backend", "multi_tensor_dot", "hyper_reduce", "hyper_update", "grads_finite",
           "reference", "extension_available", "cuda_extension_available", "triton_available", "power_iteration",
           "agd"]


class _Bound:
    """The fused module's entries with a kernel set bound (the Triton kernels: same arguments as the ops)."""

    def __init__(self, kernels):
        from . import fused
        self._fused, self._kernels = fused, kernels

    def hyper_reduce(self, *args, **kw):
        return self._fused.hyper_reduce(*args, kernels=self._kernels, **kw)

    def hyper_update(self, *args, **kw):
        return self._fused.hyper_update(*args, kernels=self._kernels, **kw)

    def nonfinite(self, grads):
        return self._fused.nonfinite(grads, kernels=self._kernels)


def _module(backend: str):
    if backend == "reference":
        return reference
    if backend in ("cpu", "cuda"):        # the compiled kernels: one op layer, dispatched by device
        from . import fused
        return fused
    if backend == "triton":
        return _Bound(_triton.kernels())
    raise NotImplementedError(f"no {backend!r} backend for the hypergradient ops yet")


def _scale_kw(backend: str, inv_scale) -> dict:
    if inv_scale is None:
        return {}
    if backend == "reference":
        raise ValueError("inv_scale (GradScaler's 1 / scale applied inside the kernels) needs a compiled or Triton "
                         "backend; with backend='reference' divide the gradients by the scale first")
    return {"inv_scale": inv_scale}


def hyper_reduce(backend: str, kind: str, cfg: dict, learned, per_tensor_lr: bool, grads, states, valid, hp, raw,
                 inv_scale=None):
    """Pass A of a hypergradient step (see ``reference.hyper_reduce``) on the chosen backend. ``inv_scale``:
    GradScaler's 1 / scale (a one-element float64 tensor on the device) that the kernels multiply into every
    gradient element they read, so the gradients need not be unscaled in a pass of their own."""
    return _module(backend).hyper_reduce(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw,
                                         **_scale_kw(backend, inv_scale))


def hyper_update(backend: str, kind: str, cfg: dict, learned, per_tensor_lr: bool, params, grads, states, hp, ok,
                 raw=None, jac=None, inv_scale=None):
    """Pass B of a hypergradient step (see ``reference.hyper_update``) on the chosen backend (``inv_scale`` as
    for ``hyper_reduce``)."""
    return _module(backend).hyper_update(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok,
                                         raw=raw, jac=jac, **_scale_kw(backend, inv_scale))


def grads_finite(backend: str, grads) -> torch.Tensor:
    """0-dim bool tensor: every element of every gradient is finite (one read of the gradients)."""
    if backend in ("cpu", "cuda", "triton"):
        return _module(backend).nonfinite(grads)
    ok = torch.ones((), dtype=torch.bool, device=grads[0].device)
    for g in grads:
        ok = ok & torch.isfinite(g).all()
    return ok
