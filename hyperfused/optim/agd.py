"""Automatic Gradient Descent (Bernstein, Mingard, Huang, Azizan, Yue 2023): hyperparameter-free and
architecture-aware (docs/MATH.md §7)."""
from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Optional

import torch

from ..ops import agd as agd_ops

Tensor = torch.Tensor


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return isinstance(t, DTensor)


class AGD(torch.optim.Optimizer):
    """Automatic Gradient Descent.

    For each weight W_k (a matrix, or a convolution kernel whose kh*kw slices W[:, :, i, j] count separately),
    with s_k = sqrt(d_out/d_in) (divided by sqrt(kh*kw) for convolutions) and L the number of weight tensors:

    - Frobenius (the paper's algorithm): n = |grad slice|_F, G = (1/L) sum_k s_k sum_slices n,
      eta = log((1 + sqrt(1 + 4G)) / 2), W <- W - gain (eta/L) s_k grad / n per slice (a zero norm: no step).
    - Spectral (docs/MATH.md §7.3): sigma = |grad slice|_2 by warm-started power iteration (u, v kept in the state),
      G = (1/L) sum_k s_k sum_slices |g|_F^2 / sigma, W <- W - gain (eta/L) s_k grad / sigma.

    ``opt.eta`` is the automatic learning rate of the last step (0-dim tensor). Call ``init_weights()`` once
    before training for the scaled (semi-)orthogonal initialisation the method assumes.

    Args:
        params: weight matrices and 4-D convolution kernels only (bias=False, affine-free normalisation).
        gain: multiplies every step (1 is the method).
        norm: "frobenius" or "spectral".
        tol, max_iter: the power iteration's relative tolerance and iteration cap (spectral).
        backend: "auto", "reference", "cpu", "cuda" (the CUDA extension's kernels) or "triton" (the Triton
            kernels: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1; its step reads nothing back to the
            host in the Frobenius variant). "auto" runs the compiled kernels built for the tensors' device.
    """

    def __init__(self, params, gain: float = 1.0, norm: str = "frobenius", *, tol: float = 1e-4,
                 max_iter: int = 20, backend: str = "auto") -> None:
        if norm not in ("frobenius", "spectral"):
            raise ValueError(f"AGD: norm must be 'frobenius' or 'spectral', got {norm!r}")
        if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain >= 0):
            raise ValueError(f"AGD: gain must be a finite number >= 0, got {gain!r}")
        if backend not in ("auto", "reference", "cpu", "cuda", "triton"):
            raise ValueError(f"AGD: unknown backend {backend!r}; choose auto, reference, cpu, cuda or triton")
        if backend == "cuda":
            from ..ops import _ext
            if not _ext.cuda_extension_available():
                raise NotImplementedError(
                    f"AGD: backend='cuda' needs the CUDA extension hyperfused._C_cuda, which is not built here "
                    f"({_ext.cuda_extension_error()}); build with a CUDA build of torch and CUDA_HOME set")
        if backend == "triton":
            from ..ops import triton as _tri
            if not _tri.available():
                raise RuntimeError(f"AGD: backend='triton' needs the triton package ({_tri.error()})")
            self._triton = _tri
        if tol <= 0 or int(max_iter) < 1:
            raise ValueError(f"AGD: tol must be > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        super().__init__(params, dict(gain=float(gain)))
        self.norm = norm
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.backend = backend
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() not in (2, 4):
                    raise ValueError(
                        f"AGD is defined for weight matrices and 4-D convolution kernels; got a parameter of shape "
                        f"{tuple(p.shape)}. Build the model with bias=False and affine-free normalisation "
                        f"(or give AGD only the weights).")
                if p.is_complex() or not p.is_floating_point():
                    raise TypeError(f"AGD optimizes real floating-point weights, got dtype {p.dtype}")
        if backend == "cuda":
            for group in self.param_groups:
                for p in group["params"]:
                    if p.device.type != "cuda":
                        raise ValueError(f"AGD: backend='cuda' runs on CUDA tensors; got a parameter on {p.device}")
        if backend == "triton":
            for group in self.param_groups:
                for p in group["params"]:
                    if p.device.type != "cuda" and not (p.device.type == "cpu" and self._triton.interpreting()):
                        raise ValueError(f"AGD: backend='triton' runs on CUDA tensors (and on CPU tensors under the "
                                         f"Triton interpreter, TRITON_INTERPRET=1); got a parameter on {p.device}")
        self.L = sum(len(g["params"]) for g in self.param_groups)
        dev = self.param_groups[0]["params"][0].device if self.L else "cpu"
        self.eta = torch.zeros((), dtype=torch.float64, device=dev)

    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None) -> None:
        """Each weight (each kernel slice of a convolution) drawn uniformly from the (semi-)orthogonal
        matrices, then multiplied by s_k."""
        for group in self.param_groups:
            for p in group["params"]:
                s = agd_ops.scale_of(p)
                if p.dim() == 2:
                    w = torch.empty(p.shape, dtype=torch.float64)
                    torch.nn.init.orthogonal_(w, generator=generator)
                    p.copy_((w * s).to(p.dtype))
                else:
                    for i in range(p.shape[2]):
                        for j in range(p.shape[3]):
                            w = torch.empty(p.shape[:2], dtype=torch.float64)
                            torch.nn.init.orthogonal_(w, generator=generator)
                            p[:, :, i, j].copy_((w * s).to(p.dtype))

    def _use_kernels(self, params) -> bool:
        return self.backend in ("auto", "cpu", "cuda")

    def _tri_kernels(self):
        """The Triton AGD kernel module when backend='triton', else None."""
        if self.backend != "triton":
            return None
        import importlib
        return importlib.import_module("hyperfused.ops.triton.agd")

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        gains = [g["gain"] for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return loss
        for p in params:
            if p.grad.is_sparse:
                raise ValueError(f"AGD does not support sparse gradients (parameter of shape {tuple(p.shape)})")
        group = None
        if any(_is_dtensor(p) for p in params):     # FSDP2: work on the local shards (sharded along d_out)
            if self.norm == "spectral":
                raise NotImplementedError(
                    "AGD norm='spectral' is not supported with sharded (FSDP2/DTensor) parameters: the power "
                    "iteration needs whole gradient matrices. Use norm='frobenius' (its per-slice sums of squares "
                    "are all-reduced across shards) or DDP.")
            if not all(_is_dtensor(p) and p.device_mesh.ndim == 1 for p in params):
                raise ValueError("AGD with DTensor parameters needs all of them sharded on one 1-D mesh")
            group = params[0].device_mesh.get_group()
            shapes = [p.shape for p in params]
            grads = [p.grad.to_local() for p in params]
            params = [p.detach().to_local() for p in params]
        else:
            shapes = [p.shape for p in params]
            grads = [p.grad for p in params]
        counts = [1 if len(sh) == 2 else sh[2] * sh[3] for sh in shapes]
        key = tuple(id(p) for p in params) + (group is not None,)
        if getattr(self, "_scale_key", None) != key:     # per-slice s_k * gain, built once per set of tensors
            self._scale_key = key
            self._scale_vec = torch.cat([torch.full((c,), agd_ops.scale_of_shape(sh), dtype=torch.float64)
                                         for sh, c in zip(shapes, counts)]).to(params[0].device)
            self._gain_vec = torch.cat([torch.full((c,), gn, dtype=torch.float64)
                                        for gn, c in zip(gains, counts)]).to(params[0].device)
        scale, gain = self._scale_vec, self._gain_vec
        tri = self._tri_kernels()
        if tri is not None:
            grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        fused_spectral = self.norm == "spectral" and (tri is not None or (
            self._use_kernels(params) and agd_ops._compiled_for(grads) and all(g.is_contiguous() for g in grads)))
        if fused_spectral:               # pass A: sums of squares and g v in one read
            sq, denom = self._sigmas_fused(params, grads)
        elif tri is not None:
            sq = tri.agd_sumsq(grads, counts)
        else:
            sq = torch.cat(agd_ops.sumsq(grads) if self._use_kernels(params) else
                           [agd_ops.as_slices(g.double()).pow(2).sum(dim=(1, 2)) for g in grads])
        if group is not None:            # one all-reduce of every slice's partial sum of squares
            import torch.distributed as dist
            dist.all_reduce(sq, group=group)
        if self.norm == "frobenius":
            denom = sq.sqrt()
            G = (scale * denom).sum()
        else:
            if not fused_spectral:
                denom = torch.cat(self._sigmas(params, grads, None))
            G = (scale * torch.where(denom > 0, sq / denom.clamp_min(1e-300), torch.zeros_like(sq))).sum()
        G = G / self.L
        eta = torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)
        coef = torch.where(denom > 0, gain * (eta / self.L) * scale / denom.clamp_min(1e-300), torch.zeros_like(denom))
        # the skip decision: the kernels read it where it is (on a GPU, no host synchronisation)
        ok = torch.isfinite(coef).all() & torch.isfinite(eta)
        if tri is not None:
            tri.agd_update(params, grads, coef, ok)
        elif self._use_kernels(params):
            agd_ops.update(params, grads, list(torch.split(coef, counts)), ok)
        elif bool(ok):
            for p, g, c in zip(params, grads, torch.split(coef, counts)):
                p.sub_((c.reshape(1, 1, *p.shape[2:]) if p.dim() == 4 else c).to(p.dtype) * g)
        self.eta = torch.where(ok, eta, self.eta)
        return loss

    def _init_uv(self, p):
        st = self.state[p]
        if "u" not in st:
            S, m, n = agd_ops.slices_of(p), p.shape[0], p.shape[1]
            gen = torch.Generator().manual_seed(1234 + len(self.state))
            st["u"] = torch.nn.functional.normalize(torch.randn(S, m, generator=gen, dtype=torch.float64), dim=1).to(p.device)
            st["v"] = torch.nn.functional.normalize(torch.randn(S, n, generator=gen, dtype=torch.float64), dim=1).to(p.device)
        for k in ("u", "v"):      # a state dict loaded into float32 weights comes back cast: the vectors are float64
            x = st[k]
            if x.dtype != torch.float64 or not x.is_contiguous() or x.device != p.device:
                st[k] = x.to(device=p.device, dtype=torch.float64).contiguous()
        return st

    def _inv_sqrt_rank(self, params):
        """Per slice 1 / sqrt(min(d_out, d_in)), cached per set of shapes (the lower clamp of sigma)."""
        key = tuple(tuple(p.shape) for p in params) + (params[0].device,)
        hit = getattr(self, "_rank_cache", None)
        if hit is None or hit[0] != key:
            rank = torch.cat([torch.full((agd_ops.slices_of(p),), float(min(p.shape[0], p.shape[1])),
                                         dtype=torch.float64) for p in params])
            hit = self._rank_cache = (key, rank.rsqrt().to(params[0].device))
        return hit[1]

    def _sigmas_fused(self, params, grads):
        """One power iteration on the native layout with the fused ops: g v together with the sums of squares
        (pass A), u <- g v / |g v| for every row of every tensor in one call, g^T u (one more read), then
        v <- g^T u / |g^T u| likewise; u and v are updated in place in the state (a zero row keeps its vector,
        so a zero gradient leaves u, v as they were). The two half-step estimates decide convergence; only the
        tensors with slices that have not settled continue with batched iterations."""
        states = [self._init_uv(p) for p in params]
        tri = self._tri_kernels()
        kern = tri or torch.ops.hyperfused
        normalize = tri.agd_normalize_rows if tri is not None else agd_ops.normalize_rows_
        us, vs = [st["u"] for st in states], [st["v"] for st in states]
        sq, gv = kern.agd_gv(list(grads), vs)
        s_b = normalize(gv, us)
        s_a = normalize(kern.agd_gtu(list(grads), us), vs)
        f = sq.sqrt()
        sigma = s_a
        iters = [1] * len(params)
        if self.max_iter > 1:
            unsettled = ((s_a - s_b).abs() > self.tol * s_a) & (f > 0)
            if bool(unsettled.any()):
                # the rare case: continue the tensors that have unsettled slices with batched iterations
                sigma = sigma.clone()
                flags = unsettled.tolist()
                r0 = 0
                for t, (st, g) in enumerate(zip(states, grads)):
                    S = st["u"].shape[0]
                    if any(flags[r0:r0 + S]):
                        done = ~unsettled[r0:r0 + S]
                        u, v = st["u"], st["v"]
                        mat = agd_ops.as_slices(g if g.dtype == torch.float64 else g.float())
                        (sig2,), (u2,), (v2,), (k,) = agd_ops.power_iteration([mat], [u], [v], tol=self.tol,
                                                                              max_iter=self.max_iter - 1)
                        sigma[r0:r0 + S] = torch.where(done, sigma[r0:r0 + S], sig2.to(torch.float64))
                        u.copy_(torch.where(done.unsqueeze(1), u, u2.to(torch.float64)))
                        v.copy_(torch.where(done.unsqueeze(1), v, v2.to(torch.float64)))
                        iters[t] += k
                    r0 += S
        sigma = torch.where(f > 0, torch.minimum(torch.maximum(sigma, f * self._inv_sqrt_rank(params)), f),
                            torch.zeros_like(f))
        self.last_iterations = iters
        return sq, sigma

    def _sigmas(self, params, grads, _unused):
        us, vs, mats = [], [], []
        for p, g in zip(params, grads):
            st = self.state[p]
            S, m, n = agd_ops.slices_of(p), p.shape[0], p.shape[1]
            if "u" not in st:
                gen = torch.Generator().manual_seed(1234 + len(self.state))
                st["u"] = torch.nn.functional.normalize(torch.randn(S, m, generator=gen, dtype=torch.float64), dim=1).to(p.device)
                st["v"] = torch.nn.functional.normalize(torch.randn(S, n, generator=gen, dtype=torch.float64), dim=1).to(p.device)
            mats.append(agd_ops.as_slices(g if g.dtype == torch.float64 else g.float()))
            us.append(st["u"])
            vs.append(st["v"])
        sig, us2, vs2, iters = agd_ops.power_iteration(mats, us, vs, tol=self.tol, max_iter=self.max_iter)
        self.last_iterations = iters
        for p, u, v in zip(params, us2, vs2):
            self.state[p]["u"], self.state[p]["v"] = u.to(torch.float64), v.to(torch.float64)
        return [s.to(torch.float64) for s in sig]
