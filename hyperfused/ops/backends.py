"""The backends as objects: the optimizers hold one per param group and call only this small interface.

Every backend ("reference", "cpu", "cuda", "triton") answers the same calls:

``reduce(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, inv_scale=None)``
    pass A: level 0's hypergradients and the finite flag (``reference.hyper_reduce``'s contract);
``update(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw=None, jac=None, inv_scale=None,
decay=None)``
    pass B, in place where ``ok`` (one-pass mode, with ``jac``: also pass A's result from the old state);
    ``decay``: lr * weight_decay of a decoupled weight decay (one value or one per tensor): x is multiplied by
    1 minus it before the kind's step, in the same pass;
``finite(grads)``
    a 0-dim bool: every gradient element is finite;
``tower_plan(levels, specs, d0_flat, finite) -> (commit, ok)``
    the levels above level 0, tentatively: ``commit(ok)`` writes them where the step's verdict is true;
``reduce_tower(...)`` / ``update_tower(...)``
    pass A (one-pass: pass B) and the tower in one call, or None where this backend cannot fuse them;
``unscales``
    whether the kernels apply GradScaler's 1 / scale as they read the gradients (otherwise the optimizer
    divides the gradients first).

Automatic Gradient Descent (``hyperfused.AGD``) calls three more:

``agd_sumsq(grads, counts)``
    every slice's sum of squares (float64, slices in tensor order; ``counts``: slices per tensor);
``agd_update(params, grads, coef, counts, ok)``
    W <- W - coef[slice] * g in place, nothing written where the 0-dim bool ``ok`` is false;
``agd_power_kernels(grads)``
    the fused power-iteration passes for these gradients, ``(gv, gtu, normalize_rows)`` with the compiled
    ops' contracts (``agd_gv``, ``agd_gtu``, ``agd_normalize_rows``), or None where the backend has none
    (the optimizer then runs the batched PyTorch power iteration).

The Python tower (``reference.tower_plan``) is the oracle every compiled tower is tested against; a backend
whose compiled tower does not cover a tower (too tall, mixed dtypes) falls back to it.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch

from . import reference as ref

Tensor = torch.Tensor
Commit = Callable[[Tensor], None]


class Backend:
    name = ""
    unscales = False

    def reduce(self, kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, inv_scale=None):
        raise NotImplementedError

    def update(self, kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw=None, jac=None,
               inv_scale=None, decay=None):
        raise NotImplementedError

    def finite(self, grads) -> Tensor:
        ok = torch.ones((), dtype=torch.bool, device=grads[0].device)
        for g in grads:
            ok = ok & torch.isfinite(g).all()
        return ok

    def tower_plan(self, levels, specs, d0_flat: Tensor, finite: Tensor) -> Tuple[Commit, Tensor]:
        new = ref.tower_plan(levels, specs, d0_flat, finite)
        return (lambda ok: ref.tower_commit(levels, new, ok)), new["ok"]

    def reduce_tower(self, kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, levels, specs, n_group,
                     inv_scale=None) -> Optional[Tuple[Commit, Tensor]]:
        return None

    def update_tower(self, kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw, jac, levels, specs,
                     n_group, inv_scale=None, decay=None) -> Optional[Tuple[Commit, Tensor]]:
        return None

    # ---------------------------------------------------------------- AGD
    def agd_sumsq(self, grads, counts) -> Tensor:
        from . import agd as agd_ops
        return torch.cat([agd_ops.sumsq_slices(g) for g in grads])

    def agd_update(self, params, grads, coef: Tensor, counts, ok: Tensor) -> None:
        # where(ok, ...): no host read of the verdict (a traced step cannot branch on it)
        for p, g, c in zip(params, grads, torch.split(coef, list(counts))):
            step = (c.reshape(1, 1, *p.shape[2:]) if p.dim() == 4 else c).to(p.dtype) * g
            p.copy_(torch.where(ok, p - step, p))

    def agd_power_kernels(self, grads):
        return None

    def __repr__(self) -> str:
        return f"<hyperfused backend {self.name!r}>"


class ReferenceBackend(Backend):
    """The pure-PyTorch ops (reference.py): the oracle, on any device."""
    name = "reference"

    def reduce(self, kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, inv_scale=None):
        _no_scale(inv_scale)
        return ref.hyper_reduce(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw)

    def update(self, kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw=None, jac=None,
               inv_scale=None, decay=None):
        _no_scale(inv_scale)
        return ref.hyper_update(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw=raw, jac=jac,
                                decay=decay)


def _no_scale(inv_scale) -> None:
    if inv_scale is not None:
        raise ValueError("inv_scale (GradScaler's 1 / scale applied inside the kernels) needs a compiled or Triton "
                         "backend; with backend='reference' divide the gradients by the scale first")


class CompiledBackend(Backend):
    """The C++ kernels (CPU tensors) or the CUDA kernels (CUDA tensors): the ops ``torch.ops.hyperfused.*``,
    dispatched by device; the levels above run in the compiled tower ops, fused into pass A (one-pass: pass B)
    where they can be."""

    def __init__(self, name: str):
        self.name = name
        self.unscales = name == "cuda"          # the CPU kernels may keep the gradient tensor itself: unscaled first

    def _kernels(self):
        """The kernels fused.py calls: None for the compiled ops (torch.ops.hyperfused, by device)."""
        return None

    def reduce(self, kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, inv_scale=None):
        from . import fused
        return fused.hyper_reduce(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw,
                                  kernels=self._kernels(), inv_scale=inv_scale)

    def update(self, kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw=None, jac=None,
               inv_scale=None, decay=None):
        from . import fused
        return fused.hyper_update(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw=raw, jac=jac,
                                  kernels=self._kernels(), inv_scale=inv_scale, decay=decay)

    def finite(self, grads) -> Tensor:
        from . import fused
        return fused.nonfinite(grads, kernels=self._kernels())

    def tower_plan(self, levels, specs, d0_flat, finite):
        from . import tower
        if not tower.supported(levels, specs):
            return super().tower_plan(levels, specs, d0_flat, finite)
        scr, ok = tower.plan(levels, specs, d0_flat, finite)
        return (lambda ok_: tower.commit(levels, specs, scr, ok_)), ok

    def reduce_tower(self, kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, levels, specs, n_group,
                     inv_scale=None):
        from . import tower
        if not tower.fusable(levels, specs, grads, per_tensor_lr, n_group):
            return None
        scr, ok = tower.reduce_plan(kind, cfg, learned, per_tensor_lr, grads, states, valid, hp, raw, levels, specs,
                                    inv_scale=inv_scale)
        return (lambda ok_: tower.commit(levels, specs, scr, ok_)), ok

    def update_tower(self, kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw, jac, levels, specs,
                     n_group, inv_scale=None, decay=None):
        from . import tower
        if not tower.fusable(levels, specs, grads, per_tensor_lr, n_group):
            return None
        scr, tok = tower.update_plan(kind, cfg, learned, per_tensor_lr, params, grads, states, hp, ok, raw, jac,
                                     levels, specs, inv_scale=inv_scale, decay=decay)
        return (lambda ok_: tower.commit(levels, specs, scr, ok_)), tok


    # the AGD ops: compiled where built for the tensors' device, else the reference ops (agd_ops falls back)
    def agd_sumsq(self, grads, counts) -> Tensor:
        from . import agd as agd_ops
        return torch.cat(agd_ops.sumsq(grads))

    def agd_update(self, params, grads, coef: Tensor, counts, ok: Tensor) -> None:
        from . import agd as agd_ops
        agd_ops.update(params, grads, list(torch.split(coef, list(counts))), ok)

    def agd_power_kernels(self, grads):
        from . import agd as agd_ops
        if not (agd_ops._compiled_for(grads) and all(g.is_contiguous() for g in grads)):
            return None
        k = torch.ops.hyperfused
        return k.agd_gv, k.agd_gtu, agd_ops.normalize_rows_


class TritonBackend(CompiledBackend):
    """The Triton kernels (CUDA tensors; CPU tensors under the Triton interpreter), with the same arguments as
    the compiled ops; the whole tower in one Triton program (pass A and the tower are separate launches)."""

    def __init__(self):
        super().__init__("triton")
        self.unscales = True

    def _kernels(self):
        """The Triton launchers themselves in eager steps; as custom ops (traceable by torch.compile through their
        fakes) under a trace, when the compiled extension (whose schemas the ops copy) is loaded. (An eager call
        through the op costs its dispatch: boxing every tensor of the lists, ~0.4 ms a call at 1000 tensors.)"""
        from . import triton as _triton
        from .triton import ops as _tops
        mod = _triton.kernels()
        if mod is None:
            return None
        as_ops = _tops.ops()       # (registered at the first eager step: a trace cannot register a library)
        return (as_ops or mod) if torch.compiler.is_compiling() else mod

    def _agd_kernels(self):
        """The Triton AGD launchers, as custom ops under a trace (see ``_kernels``)."""
        from .triton import agd as mod
        from .triton import ops as _tops
        as_ops = _tops.ops()
        return (as_ops or mod) if torch.compiler.is_compiling() else mod

    def agd_sumsq(self, grads, counts) -> Tensor:
        return self._agd_kernels().agd_sumsq(grads, list(counts))

    def agd_update(self, params, grads, coef: Tensor, counts, ok: Tensor) -> None:
        self._agd_kernels().agd_update(params, grads, coef, ok)

    def agd_power_kernels(self, grads):
        k = self._agd_kernels()
        return k.agd_gv, k.agd_gtu, k.agd_normalize_rows

    def reduce_tower(self, *args, **kw):
        return None

    def update_tower(self, *args, **kw):
        return None

    def tower_plan(self, levels, specs, d0_flat, finite):
        from .triton import tower
        # (under torch.compile the levels above run as the Python tower: the Triton tower's launcher builds its
        # tables on the host, which a trace cannot follow; the same arithmetic, to round-off)
        if torch.compiler.is_compiling():
            return Backend.tower_plan(self, levels, specs, d0_flat, finite)
        scr, ok = tower.plan(levels, specs, d0_flat, finite)
        return (lambda ok_: tower.commit(levels, specs, scr, ok_)), ok


BACKENDS: Dict[str, Backend] = {"reference": ReferenceBackend(), "cpu": CompiledBackend("cpu"),
                                "cuda": CompiledBackend("cuda"), "triton": TritonBackend()}


def get(name: str) -> Backend:
    return BACKENDS[name]
