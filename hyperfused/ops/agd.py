"""Automatic Gradient Descent's ops (docs/MATH.md §7): per-slice norms, the batched power iteration, the update.

Pure PyTorch; the multi-tensor passes run as the compiled ops ``hyperfused::agd_sumsq`` / ``agd_update`` when
they are built for the tensors' device (the C++ extension for CPU tensors, the CUDA extension for CUDA ones).

A weight of shape (d_out, d_in) is one slice; a convolution kernel (d_out, d_in, kh, kw) has kh*kw slices
W[:, :, i, j]. In a contiguous kernel, flat element f belongs to slice f % (kh*kw).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch

Tensor = torch.Tensor


def slices_of(t: Tensor) -> int:
    return 1 if t.dim() == 2 else t.shape[2] * t.shape[3]


def as_slices(g: Tensor) -> Tensor:
    """(slices, d_out, d_in) view/copy of a matrix or convolution kernel."""
    if g.dim() == 2:
        return g.unsqueeze(0)
    return g.permute(2, 3, 0, 1).reshape(-1, g.shape[0], g.shape[1])


def scale_of_shape(shape) -> float:
    """s = sqrt(d_out / d_in), divided by sqrt(kh * kw) for convolutions."""
    s = math.sqrt(shape[0] / shape[1])
    if len(shape) == 4:
        s /= math.sqrt(shape[2] * shape[3])
    return s


def scale_of(t: Tensor) -> float:
    return scale_of_shape(t.shape)


#: torch reduces an input of fewer elements than at::internal::GRAIN_SIZE (32768) on the calling thread alone;
#: fixed_sum folds below this (well under it) before it calls Tensor.sum
_SERIAL_NUMEL = 4096


def fixed_sum(x: Tensor, dim: int) -> Tensor:
    """``x`` summed over ``dim`` with the same bits for any number of threads. On CPU tensors torch's reductions
    (and MKL's matrix products) split long sums by thread count: the input is first folded in half by element-wise
    additions (element i with element n - h + i, a fixed pairwise tree) until it holds fewer than _SERIAL_NUMEL
    elements, which Tensor.sum then reduces on one thread. Other devices use ``Tensor.sum``."""
    if x.device.type != "cpu":
        return x.sum(dim)
    dim = dim % x.dim()
    n = x.shape[dim]
    while n > 1 and x.numel() >= _SERIAL_NUMEL:
        h = n // 2
        y = x.narrow(dim, 0, h) + x.narrow(dim, n - h, h)
        if n % 2:                                              # the middle element passes to the next level
            y = torch.cat([y, x.narrow(dim, h, 1)], dim)
        x, n = y, y.shape[dim]
    return x.sum(dim)


def sumsq_slices(g: Tensor) -> Tensor:
    """The per-slice sums of squares of one gradient in float64 (pure PyTorch, thread-count independent on CPU)."""
    return fixed_sum(as_slices(g.double()).flatten(1).pow(2), 1)


def _row_norms(x: Tensor) -> Tensor:
    """Euclidean norm of every row of a matrix (squares summed in float64 by fixed_sum), in x's dtype."""
    x64 = x.double()
    return fixed_sum(x64 * x64, 1).sqrt().to(x.dtype)


def _compiled_for(tensors: Sequence[Tensor]) -> bool:
    """The compiled AGD ops run for these tensors: the C++ kernels for CPU tensors, the CUDA kernels (the CUDA
    extension) for CUDA tensors."""
    from . import _ext
    if all(t.device.type == "cpu" for t in tensors):
        return _ext.extension_available()
    if all(t.device.type == "cuda" for t in tensors):
        return _ext.cuda_extension_available()
    return False


def sumsq(grads: Sequence[Tensor]) -> List[Tensor]:
    """Per tensor, the per-slice sums of squares (float64), in one multi-tensor call when compiled."""
    from . import _ext
    grads = list(grads)
    if grads and _compiled_for(grads):
        flat = torch.ops.hyperfused.agd_sumsq([g.contiguous() for g in grads], [slices_of(g) for g in grads])
        return list(torch.split(flat, [slices_of(g) for g in grads]))
    return [sumsq_slices(g) for g in grads]


def update(params: Sequence[Tensor], grads: Sequence[Tensor], coef: Sequence[Tensor],
           ok: Optional[Tensor] = None) -> None:
    """W <- W - coef[slice] * g for every tensor (coef: per-slice float64 vectors), in place; nothing is written
    when the one-element bool ``ok`` (on the tensors' device) is false."""
    from . import _ext
    params, grads, coef = list(params), list(grads), list(coef)
    if params and _compiled_for(params) and all(p.is_contiguous() for p in params):
        torch.ops.hyperfused.agd_update([p.detach() for p in params], [g.contiguous() for g in grads],
                                        torch.cat(coef), ok)
        return
    if ok is not None:                               # the PyTorch loop: the decision read on the host
        if not bool(ok):
            return
    for p, g, c in zip(params, grads, coef):
        if p.dim() == 2:
            p.sub_((c.to(p.dtype) * g))
        else:
            p.sub_(c.to(p.dtype).reshape(1, 1, p.shape[2], p.shape[3]) * g)


def normalize_rows_(xs: Sequence[Tensor], dsts: Sequence[Tensor]) -> Tensor:
    """The power iteration's normalisation for many vectors at once: every row r of every float64 (rows, d)
    tensor xs[t] gives dsts[t][r] = xs[t][r] / |xs[t][r]|, written in place; a row of norm 0 leaves
    dsts[t][r] as it was. Returns the row norms, concatenated (float64). One compiled call for all tensors
    (``hyperfused::agd_normalize_rows``) where the ops are built for the tensors' device."""
    xs, dsts = list(xs), list(dsts)
    if len(xs) != len(dsts):
        raise ValueError(f"normalize_rows_: {len(xs)} tensors but {len(dsts)} destinations")
    if not xs:
        return torch.zeros(0, dtype=torch.float64)
    if _compiled_for(xs + dsts):
        return torch.ops.hyperfused.agd_normalize_rows(xs, dsts)
    norms = []
    for i, (x, d) in enumerate(zip(xs, dsts)):
        if x.dtype != torch.float64 or x.dim() != 2 or d.dtype != torch.float64 or d.numel() != x.numel():
            raise ValueError(f"normalize_rows_: tensor {i} must be a float64 matrix (rows, d) and its destination "
                             f"a float64 tensor of as many elements; got {x.dtype} {tuple(x.shape)} and "
                             f"{d.dtype} {tuple(d.shape)}")
        n = _row_norms(x)
        dv = d.view(x.shape)
        dv.copy_(torch.where((n > 0).unsqueeze(1), x / torch.where(n > 0, n, 1.0).unsqueeze(1), dv))
        norms.append(n)
    return torch.cat(norms)


def power_iteration(mats: Sequence[Tensor], us: Sequence[Tensor], vs: Sequence[Tensor], tol: float = 1e-4,
                    max_iter: int = 20) -> Tuple[List[Tensor], List[Tensor], List[Tensor], List[int]]:
    """Largest singular value of each matrix by power iteration, warm-started from (u, v).

    ``mats[i]`` is (batch, m, n) (or (m, n)); ``us[i]`` (batch, m), ``vs[i]`` (batch, n) unit vectors. One
    iteration is v <- normalize(g^T u) (estimate |g^T u|), u <- normalize(g v) (estimate |g v|, sigma); it
    stops when the two estimates of an iteration agree to ``tol`` (relative) for every matrix, or after
    ``max_iter`` iterations: a warm start that has settled costs one iteration, two reads of each matrix. The estimate is then clamped to
    [|g|_F / sqrt(min(m, n)), |g|_F] (it cannot lie outside). A zero matrix gives sigma = 0 and leaves its u, v.
    Matrices of the same shape are batched together. Returns (sigmas, us, vs, iterations per matrix).

    Convergence: the error shrinks like (sigma_2 / sigma_1)^(2k) after k iterations. When the top two
    singular values are close the estimate still rises monotonically towards sigma_1 from below; the cap then
    stops it early, leaving an estimate between sigma_2 and sigma_1 (never above sigma_1), i.e. a step that is
    slightly too large, by at most the factor sigma_1 / sigma_2.
    """
    out_s, out_u, out_v, iters = [None] * len(mats), [None] * len(mats), [None] * len(mats), [0] * len(mats)
    groups = {}
    for i, g in enumerate(mats):
        g3 = g if g.dim() == 3 else g.unsqueeze(0)
        groups.setdefault((tuple(g3.shape[1:]), g3.dtype, g3.device), []).append(i)
    for _, idx in groups.items():
        G = torch.cat([(mats[i] if mats[i].dim() == 3 else mats[i].unsqueeze(0)) for i in idx])
        U = torch.cat([(us[i] if us[i].dim() == 2 else us[i].unsqueeze(0)) for i in idx]).to(G.dtype)
        V = torch.cat([(vs[i] if vs[i].dim() == 2 else vs[i].unsqueeze(0)) for i in idx]).to(G.dtype)
        fro = _row_norms(G.flatten(1))
        nonzero = fro > 0
        sigma = torch.zeros_like(fro)
        active = nonzero.clone()
        k = 0
        for k in range(1, max_iter + 1):
            # two half-iterations, each with its own estimate; they bracket sigma_1 from below and agree once
            # the iteration has settled, so one iteration (two reads of g) can decide convergence. The products
            # are summed in a fixed order (fixed_sum): the same bits for any number of threads.
            gtu = _matvec(G, U, transpose=True)
            s_a = _row_norms(gtu)
            v_new = gtu / s_a.clamp_min(1e-12).unsqueeze(1)
            gv = _matvec(G, v_new, transpose=False)
            s_b = _row_norms(gv)
            u_new = gv / s_b.clamp_min(1e-12).unsqueeze(1)
            upd = active.unsqueeze(1)
            V = torch.where(upd, v_new, V)
            U = torch.where(upd, u_new, U)
            sigma = torch.where(active, s_b, sigma)
            change = (s_b - s_a).abs() / s_b.clamp_min(torch.finfo(s_b.dtype).tiny)
            active = active & (change > tol)
            # the early exit reads the device; a traced step runs every iteration (inactive rows keep their values)
            if not torch.compiler.is_compiling() and not bool(active.any()):
                break
        rank = min(G.shape[1], G.shape[2])
        sigma = torch.where(nonzero, torch.minimum(torch.maximum(sigma, fro / math.sqrt(rank)), fro), sigma)
        pos = 0
        for i in idx:
            b = mats[i].shape[0] if mats[i].dim() == 3 else 1
            sl = slice(pos, pos + b)
            squeeze = mats[i].dim() == 2
            out_s[i] = sigma[sl][0] if squeeze else sigma[sl]
            out_u[i] = U[sl][0] if squeeze else U[sl]
            out_v[i] = V[sl][0] if squeeze else V[sl]
            iters[i] = k
            pos += b
    return out_s, out_u, out_v, iters


def _matvec(G: Tensor, x: Tensor, transpose: bool) -> Tensor:
    """Per batch entry g^T x (x of length m) or g x (x of length n) for G of shape (batch, m, n). On CPU the
    products are summed by fixed_sum (thread-count independent; MKL's bmm is not), elsewhere by bmm."""
    if G.device.type != "cpu":
        if transpose:
            return torch.bmm(G.transpose(1, 2), x.unsqueeze(2)).squeeze(2)
        return torch.bmm(G, x.unsqueeze(2)).squeeze(2)
    if transpose:
        return fixed_sum(G * x.unsqueeze(2), 1)
    return fixed_sum(G * x.unsqueeze(1), 2)
