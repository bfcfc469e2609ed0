"""Automatic Gradient Descent (Bernstein, Mingard, Huang, Azizan, Yue 2023): hyperparameter-free and
architecture-aware (docs/MATH.md §7)."""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict, defaultdict
from itertools import chain
from typing import Any, Callable, Dict, List, Optional

import torch

from .. import ops
from ..ops import agd as agd_ops
from .base import _is_dtensor

Tensor = torch.Tensor

#: keys torch itself may put in a param group (``param_names`` for named parameters; ``differentiable`` is added
#: to the defaults by torch's ``__setstate__``), and AGD's one per-group hyperparameter
_TORCH_GROUP_KEYS = ("params", "param_names", "differentiable", "capturable")   # (torch.compile adds capturable)
_GROUP_HYPER = ("gain",)
#: what a parameter's state may hold: the power iteration's vectors (spectral) and, in the state of the first
#: parameter, the optimizer's skip counter and the last step's eta
_STATE_KEYS = ("u", "v", "skipped_steps", "eta")


_FLOAT_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _checked_gain(gain, where: str) -> float:
    if not (_real(gain) and math.isfinite(gain) and gain >= 0):
        raise ValueError(f"{where}: gain must be a finite number >= 0, got {gain!r}")
    return float(gain)


class AGD(torch.optim.Optimizer):
    """Automatic Gradient Descent.

    For each weight W_k (a matrix, or a convolution kernel whose kh*kw slices W[:, :, i, j] count separately),
    with s_k = sqrt(d_out/d_in) (divided by sqrt(kh*kw) for convolutions) and L the number of weight tensors:

    - Frobenius (the paper's algorithm): n = |grad slice|_F, G = (1/L) sum_k s_k sum_slices n,
      eta = log((1 + sqrt(1 + 4G)) / 2), W <- W - gain (eta/L) s_k grad / n per slice (a zero norm: no step).
    - Spectral (docs/MATH.md §7.3): sigma = |grad slice|_2 by warm-started power iteration (u, v kept in the state),
      G = (1/L) sum_k s_k sum_slices |g|_F^2 / sigma, W <- W - gain (eta/L) s_k grad / sigma.

    ``opt.eta`` is the automatic learning rate of the last step taken (0-dim tensor). Call ``init_weights()`` once
    before training for the scaled (semi-)orthogonal initialisation the method assumes.

    A gradient holding NaN or Inf skips the whole step: weights and state (u, v, eta) stay bitwise as they were and
    ``opt.skipped_steps`` counts it; the decision is a device-side flag (``where(ok, new, old)``). Each step reads
    ``param_groups`` afresh: an edited ``gain`` is used from the next step; a key AGD does not use, or a bad value,
    is refused. The state (created at construction: every parameter has an entry) holds u, v (spectral) and, with
    the first parameter, the int64 skip counter and eta; it rides in ``state_dict()``, and ``load_state_dict``
    checks a checkpoint against the optimizer before changing anything.

    Args:
        params: weight matrices and 4-D convolution kernels only (bias=False, affine-free normalisation).
        gain: multiplies every step (1 is the method); per param group.
        norm: "frobenius" or "spectral" (fixed at construction).
        tol, max_iter: the power iteration's relative tolerance and iteration cap (spectral); may be set later.
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
        self._tol, self._max_iter = self._checked_iteration(tol, max_iter)
        self._norm = norm
        self.backend = backend
        # torch's __init__ adds every group through add_param_group (below): checked, then its state created
        super().__init__(params, dict(gain=float(gain)))

    # ------------------------------------------------------------------------------------------ settings
    @staticmethod
    def _checked_iteration(tol, max_iter):
        integral = isinstance(max_iter, numbers.Integral) or (isinstance(max_iter, float) and max_iter.is_integer())
        if not (_real(tol) and math.isfinite(tol) and tol > 0 and not isinstance(max_iter, bool) and integral
                and int(max_iter) >= 1):
            raise ValueError(f"AGD: tol must be > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
        return float(tol), int(max_iter)

    @property
    def norm(self) -> str:
        """"frobenius" or "spectral", fixed at construction (the state depends on it)."""
        return self._norm

    @norm.setter
    def norm(self, value) -> None:
        raise AttributeError(f"AGD: norm is fixed at construction (it is {self._norm!r}; its state depends on it); "
                             f"build a new AGD with norm={value!r}")

    @property
    def tol(self) -> float:
        """The power iteration's relative tolerance (spectral); a new value is used from the next step."""
        return self._tol

    @tol.setter
    def tol(self, value) -> None:
        self._tol, _ = self._checked_iteration(value, self._max_iter)

    @property
    def max_iter(self) -> int:
        """The power iteration's iteration cap (spectral); a new value is used from the next step."""
        return self._max_iter

    @max_iter.setter
    def max_iter(self, value) -> None:
        _, self._max_iter = self._checked_iteration(self._tol, value)

    @property
    def L(self) -> int:
        """The number of weight tensors (the L of AGD's formulas): every parameter of every group."""
        return sum(len(g["params"]) for g in self.param_groups)

    def _params(self) -> List[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    # ------------------------------------------------------------------------------------------ param groups
    def _check_param(self, p, where: str, device) -> None:
        if not isinstance(p, Tensor):
            return                                  # torch refuses it (after this check, before any change)
        if device is not None and p.device == device and p.dtype in _FLOAT_DTYPES and p.dim() in (2, 4):
            return                                  # the common case (the device was checked with the first)
        if p.dim() not in (2, 4):
            raise ValueError(
                f"AGD is defined for weight matrices and 4-D convolution kernels; got a parameter of shape "
                f"{tuple(p.shape)}. Build the model with bias=False and affine-free normalisation "
                f"(or give AGD only the weights).")
        if p.is_complex() or not p.is_floating_point():
            raise TypeError(f"AGD optimizes real floating-point weights, got dtype {p.dtype}")
        if self.backend == "cuda" and p.device.type != "cuda":
            raise ValueError(f"AGD: backend='cuda' runs on CUDA tensors; got a parameter on {p.device}")
        if self.backend == "triton" and p.device.type != "cuda" and not (
                p.device.type == "cpu" and self._triton.interpreting()):
            raise ValueError(f"AGD: backend='triton' runs on CUDA tensors (and on CPU tensors under the "
                             f"Triton interpreter, TRITON_INTERPRET=1); got a parameter on {p.device}")
        if device is not None and p.device != device:
            raise ValueError(f"{where}: AGD steps all its tensors together, so they must be on one device; got a "
                             f"parameter on {p.device} and one on {device}")

    def _check_group(self, group: Dict[str, Any], gi: int, where: str, device=None):
        """Refuses a param group AGD cannot honour: a key it does not use, a bad gain, a tensor it cannot step.
        Returns the device of the group's tensors (the first one's)."""
        unknown = [k for k in group if k not in _TORCH_GROUP_KEYS and k not in _GROUP_HYPER]
        if unknown:
            raise ValueError(
                f"{where}: param group {gi} holds {', '.join(repr(k) for k in unknown)}, which AGD does not use: its "
                f"only per-group hyperparameter is 'gain' (norm, tol, max_iter and backend are arguments of AGD)")
        if group.get("differentiable", False):
            raise ValueError(f"{where}: param group {gi} asks for differentiable=True, which AGD does not support")
        _checked_gain(group.get("gain"), f"{where}: param group {gi}")
        for x in group["params"]:
            p = x[1] if isinstance(x, tuple) and len(x) == 2 else x
            self._check_param(p, where, device)
            if device is None and isinstance(p, Tensor):
                device = p.device
        return device

    def _check_groups(self, where: str) -> None:
        """Every group as it is now (a user may have edited param_groups since the last step)."""
        device = None
        for gi, group in enumerate(self.param_groups):
            device = self._check_group(group, gi, where, device)

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        """torch's add_param_group, after AGD's checks: a group AGD refuses leaves the optimizer as it was. The
        new tensors count in L from the next step; their state (u, v for spectral) is created now."""
        if isinstance(param_group, dict) and "params" in param_group and not isinstance(param_group["params"], set):
            raw = param_group["params"]
            param_group["params"] = [raw] if isinstance(raw, Tensor) else list(raw)   # as torch does
            candidate = dict(self.defaults)
            candidate.update(param_group)
            device = next((p.device for p in self._params()), None)
            self._check_group(candidate, len(self.param_groups), "AGD.add_param_group", device)
        super().add_param_group(param_group)        # torch's own refusals also come before it appends
        self._init_state()

    # ------------------------------------------------------------------------------------------ state
    def _init_uv(self, p: Tensor, index: Optional[int] = None) -> Dict[str, Tensor]:
        """The power iteration's vectors of p (created on first need: seeded by p's position), float64 and
        contiguous on p's device."""
        st = self.state[p]
        if "u" not in st:
            if index is None:
                index = next(i for i, q in enumerate(self._params()) if q is p)
            S, m, n = agd_ops.slices_of(p), p.shape[0], p.shape[1]
            gen = torch.Generator().manual_seed(1235 + index)
            st["u"] = torch.nn.functional.normalize(torch.randn(S, m, generator=gen, dtype=torch.float64), dim=1).to(p.device)
            st["v"] = torch.nn.functional.normalize(torch.randn(S, n, generator=gen, dtype=torch.float64), dim=1).to(p.device)
        for k in ("u", "v"):      # vectors set by hand (or by torch's cast) are brought back to float64
            x = st[k]
            if x.dtype != torch.float64 or not x.is_contiguous() or x.device != p.device:
                st[k] = x.to(device=p.device, dtype=torch.float64).contiguous()
        return st

    def _init_state(self) -> None:
        """Every parameter's state, as a first step would create it: an entry per parameter (u, v for spectral)
        and, with the first parameter, the skip counter and eta. Nothing that exists is changed."""
        params = self._params()
        for i, p in enumerate(params):
            if self._norm == "spectral":
                self._init_uv(p, i)
            else:
                self.state[p]               # an (empty) entry: checkpoints name every parameter
        if params:
            self._book()

    def _book(self) -> Optional[Dict[str, Tensor]]:
        """The state of the first parameter, which also holds the optimizer's skip counter (int64) and the last
        step's eta (float64), both 0-dim on the parameters' device (created, or moved from an earlier first
        parameter, when missing)."""
        params = self._params()
        if not params:
            return None
        st = self.state[params[0]]
        if "skipped_steps" not in st:
            for other in self.state.values():
                if other is not st and isinstance(other, dict) and "skipped_steps" in other:
                    st["skipped_steps"] = other.pop("skipped_steps")
                    if "eta" in other:
                        st["eta"] = other.pop("eta")
                    break
            else:
                st["skipped_steps"] = torch.zeros((), dtype=torch.int64, device=params[0].device)
        if "eta" not in st:
            st["eta"] = torch.zeros((), dtype=torch.float64, device=params[0].device)
        return st

    @property
    def eta(self) -> Tensor:
        """The automatic learning rate of the last step taken (0-dim float64 tensor on the parameters' device)."""
        book = self._book()
        return book["eta"] if book is not None else torch.zeros((), dtype=torch.float64)

    @property
    def skipped_steps(self) -> int:
        """How many steps were skipped because a gradient held NaN or Inf (reads the device counter)."""
        book = self._book()
        return int(book["skipped_steps"]) if book is not None else 0

    def __getstate__(self) -> Dict[str, Any]:
        # torch keeps only defaults, state and param_groups: AGD's settings travel too (copy.deepcopy, pickle)
        st = super().__getstate__()
        st.update(_norm=self._norm, _tol=self._tol, _max_iter=self._max_iter, backend=self.backend)
        return st

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        if self.__dict__.get("backend") == "triton" and "_triton" not in self.__dict__:
            from ..ops import triton as _tri
            self._triton = _tri

    # ------------------------------------------------------------------------------------------ checkpoints
    @torch._disable_dynamo
    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """torch's load_state_dict after AGD's checks of the checkpoint against this optimizer (its param groups,
        parameter counts, the state's keys, shapes, dtypes and values): a checkpoint it refuses leaves the optimizer
        as it was. The loaded state is copied (never aliased) and keeps its dtypes (u, v float64, the counter
        int64)."""
        sd = state_dict.copy() if isinstance(state_dict, dict) else state_dict
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, sd)
            if result is not None:
                sd = result
        loaded = self._check_checkpoint(sd)
        pre, post = self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()     # they ran above, on the dict checked
        self._optimizer_load_state_dict_post_hooks = OrderedDict()    # they run below, on the state as loaded
        try:
            super().load_state_dict(sd)
        finally:
            self._optimizer_load_state_dict_pre_hooks, self._optimizer_load_state_dict_post_hooks = pre, post
        params = self._params()
        state = defaultdict(dict)
        for pos, st in loaded.items():
            p = params[pos]
            state[p] = {k: v.detach().to(device=p.device, copy=True) for k, v in st.items()}
        self.state = state
        self._init_state()
        for hook in post.values():
            hook(self)

    def _check_checkpoint(self, sd) -> Dict[int, Dict[str, Tensor]]:
        """The checkpoint's state by parameter position, or a ValueError that says what differs."""
        w = "AGD.load_state_dict"
        if not (isinstance(sd, dict) and isinstance(sd.get("state"), dict)
                and isinstance(sd.get("param_groups"), (list, tuple))):
            keys = f" with keys {sorted(map(str, sd))}" if isinstance(sd, dict) else ""
            raise ValueError(f"{w}: expected an optimizer state_dict (a dict with 'state' and 'param_groups'), got "
                             f"{type(sd).__name__}{keys}")
        groups, saved = sd["param_groups"], sd["state"]
        for gi, g in enumerate(groups):               # another optimizer's checkpoint: say so first
            if not isinstance(g, dict) or "params" not in g:
                raise ValueError(f"{w}: param group {gi} of the checkpoint has no 'params': it is not a param group")
            foreign = [str(k) for k in g if k not in _TORCH_GROUP_KEYS and k not in _GROUP_HYPER]
            if foreign or "gain" not in g:
                what = f"holds {', '.join(foreign)}" if foreign else "has no gain"
                raise ValueError(f"{w}: param group {gi} of the checkpoint {what}, which AGD's param groups do not "
                                 f"(they hold gain): the checkpoint was written by another optimizer")
        keys = list(chain.from_iterable(g["params"] for g in groups))
        position = {k: i for i, k in enumerate(keys)}
        for key, st in saved.items():
            if key not in position:
                raise ValueError(f"{w}: the checkpoint's state has an entry {key!r} that belongs to none of its "
                                 f"parameters: the checkpoint was written by another optimizer")
            if not isinstance(st, dict):
                raise ValueError(f"{w}: the state of parameter {position[key]} is a {type(st).__name__}, not a dict")
            foreign = [str(k) for k in st if k not in _STATE_KEYS]
            if foreign:
                raise ValueError(f"{w}: the state of parameter {position[key]} holds {', '.join(foreign)}, which "
                                 f"AGD does not keep: the checkpoint was written by another optimizer")
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{w}: the checkpoint has {len(groups)} param groups and this optimizer "
                             f"{len(self.param_groups)}")
        for gi, (g, mine) in enumerate(zip(groups, self.param_groups)):
            if len(g["params"]) != len(mine["params"]):
                raise ValueError(f"{w}: param group {gi} holds {len(g['params'])} parameters in the checkpoint and "
                                 f"{len(mine['params'])} in this optimizer")
            _checked_gain(g["gain"], f"{w}: param group {gi} of the checkpoint")
        params = self._params()
        out: Dict[int, Dict[str, Tensor]] = {}
        with_uv = False
        for key, st in saved.items():
            pos = position[key]
            p = params[pos]
            for k, v in st.items():
                if not isinstance(v, Tensor):
                    raise ValueError(f"{w}: the state of parameter {pos} holds {k} = {v!r}, which is not a tensor")
            if ("u" in st) != ("v" in st):
                raise ValueError(f"{w}: the state of parameter {pos} holds only one of the power-iteration vectors "
                                 f"u, v")
            if "u" in st:
                with_uv = True
                if self._norm != "spectral":
                    raise ValueError(f"{w}: the checkpoint holds power-iteration vectors u, v (parameter {pos}): it "
                                     f"was written by a spectral AGD, and this optimizer has norm='frobenius'")
                S = agd_ops.slices_of(p)
                for k, n in (("u", p.shape[0]), ("v", p.shape[1])):
                    t = st[k]
                    if t.dtype != torch.float64:
                        raise ValueError(f"{w}: the state of parameter {pos} has {k} of dtype {t.dtype}; AGD keeps "
                                         f"its power-iteration vectors in torch.float64")
                    if tuple(t.shape) != (S, n):
                        raise ValueError(f"{w}: the state of parameter {pos} has {k} of shape {tuple(t.shape)}, but "
                                         f"this optimizer's parameter {pos} has shape {tuple(p.shape)} and needs "
                                         f"{(S, n)}")
                    if not bool(torch.isfinite(t).all()):
                        raise ValueError(f"{w}: the state of parameter {pos} holds a non-finite {k} (NaN or Inf)")
            for k, dtype in (("skipped_steps", torch.int64), ("eta", torch.float64)):
                if k not in st:
                    continue
                t = st[k]
                if pos != 0:
                    raise ValueError(f"{w}: the state of parameter {pos} holds {k}, which AGD keeps with its first "
                                     f"parameter")
                if t.dtype != dtype or t.dim() != 0:
                    raise ValueError(f"{w}: {k} must be a 0-dim {dtype} tensor, got {t.dtype} of shape "
                                     f"{tuple(t.shape)}")
                if not bool(torch.isfinite(t)) or bool(t < 0):
                    raise ValueError(f"{w}: {k} must be finite and >= 0, got {t.item()}")
            out[pos] = dict(st)
        if self._norm == "spectral" and saved and not with_uv:
            raise ValueError(f"{w}: the checkpoint holds no power-iteration vectors: it was written by a Frobenius "
                             f"AGD, and this optimizer has norm='spectral'")
        return out

    # ------------------------------------------------------------------------------------------ the step
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

    def _impl(self, device: torch.device) -> "ops.backends.Backend":
        """The backend object that runs the step's passes (its AGD calls: hyperfused.ops.backends): the reference
        or Triton ops when asked for; otherwise the compiled ops of the tensors' device, which fall back to the
        reference ops where they are not built."""
        if self.backend in ("reference", "triton"):
            return ops.backends.get(self.backend)
        return ops.backends.get("cuda" if device.type == "cuda" else "cpu")

    def _per_slice(self, shapes, counts, gains, device):
        """Per slice s_k and gain (float64 on the device), rebuilt when the shapes or gains change (cached by
        value: an edited gain is seen at the next step)."""
        key = (tuple(tuple(sh) for sh in shapes), tuple(gains), str(device))
        hit = getattr(self, "_slice_cache", None)
        if hit is None or hit[0] != key:
            scale = torch.cat([torch.full((c,), agd_ops.scale_of_shape(sh), dtype=torch.float64)
                               for sh, c in zip(shapes, counts)])
            gain = torch.cat([torch.full((c,), gn, dtype=torch.float64) for gn, c in zip(gains, counts)])
            hit = self._slice_cache = (key, scale.to(device), gain.to(device))
        return hit[1], hit[2]

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_groups("AGD.step")                # before anything changes
        params, gains = [], []
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    params.append(p)
                    gains.append(float(g["gain"]))
        if not params:
            return loss
        for p in params:
            if p.grad.is_sparse:
                raise ValueError(f"AGD does not support sparse gradients (parameter of shape {tuple(p.shape)})")
        L = self.L
        group = None
        if any(_is_dtensor(p) for p in params):     # FSDP2: work on the local shards (sharded along d_out)
            if self._norm == "spectral":
                raise NotImplementedError(
                    "AGD norm='spectral' is not supported with sharded (FSDP2/DTensor) parameters: the power "
                    "iteration needs whole gradient matrices. Use norm='frobenius' (its per-slice sums of squares "
                    "are all-reduced across shards) or DDP.")
            if not all(_is_dtensor(p) and p.device_mesh.ndim == 1 for p in params):
                raise ValueError("AGD with DTensor parameters needs all of them sharded on one 1-D mesh")
            group = params[0].device_mesh.get_group()
            shapes = [p.shape for p in params]
            grads = [p.grad.to_local() for p in params]
            tensors = [p.detach().to_local() for p in params]
        else:
            shapes = [p.shape for p in params]
            grads = [p.grad for p in params]
            tensors = params
        book = self._book()
        counts = [1 if len(sh) == 2 else sh[2] * sh[3] for sh in shapes]
        scale, gain = self._per_slice(shapes, counts, gains, tensors[0].device)
        impl = self._impl(tensors[0].device)
        if impl.name == "triton":
            grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        arena = None
        power = None
        if self._norm == "spectral":                  # the vectors as they were, to keep them if the step is skipped
            states = [self._init_uv(p) for p in params]
            arena = self._uv_arena(states)
            before = arena.clone()
            power = impl.agd_power_kernels(grads)
        if power is not None:            # pass A: sums of squares and g v in one read
            sq, denom = self._sigmas_fused(states, grads, power)
        else:
            sq = impl.agd_sumsq(grads, counts)
        if group is not None:            # one all-reduce of every slice's partial sum of squares
            import torch.distributed as dist
            dist.all_reduce(sq, group=group)
        if self._norm == "frobenius":
            denom = sq.sqrt()
            G = agd_ops.fixed_sum(scale * denom, 0)
        else:
            if power is None:
                denom = torch.cat(self._sigmas(states, grads))
            G = agd_ops.fixed_sum(scale * torch.where(denom > 0, sq / denom.clamp_min(1e-300), torch.zeros_like(sq)), 0)
        G = G / L
        eta = torch.log((1 + torch.sqrt(1 + 4 * G)) / 2)
        coef = torch.where(denom > 0, gain * (eta / L) * scale / denom.clamp_min(1e-300), torch.zeros_like(denom))
        # the skip decision, on the device: a NaN or Inf anywhere in a gradient makes its slice's sum of squares
        # non-finite (a zero-norm slice's coefficient is 0 and would hide it from coef); the kernels read the flag
        # where it is (on a GPU, no host synchronisation), and every other write is where(ok, new, old)
        ok = torch.isfinite(sq).all() & torch.isfinite(coef).all() & torch.isfinite(eta)
        impl.agd_update(tensors, grads, coef, counts, ok)
        if arena is not None:
            torch.where(ok, arena, before, out=arena)
        book["eta"] = torch.where(ok, eta, book["eta"])
        book["skipped_steps"].add_((~ok).to(torch.int64))
        return loss

    def _uv_arena(self, states) -> Tensor:
        """One flat float64 buffer that holds the vectors u, v of these states, which are views of it: the step's
        snapshot of them is one clone and keeping or dropping their update one where(ok, new, old), however many
        tensors there are. Rebuilt (the vectors copied in, the state's entries replaced by views) when a vector is
        not a view of it: new parameters, a loaded or copied state, vectors set by hand."""
        arena = getattr(self, "_arena", None)
        if arena is not None and all(st["u"]._base is arena and st["v"]._base is arena for st in states):
            return arena
        vecs = [st[k] for st in states for k in ("u", "v")]
        arena = self._arena = torch.cat([t.reshape(-1) for t in vecs])
        pos = 0
        for st in states:
            for k in ("u", "v"):
                n = st[k].numel()
                st[k] = arena[pos:pos + n].view(st[k].shape)
                pos += n
        return arena

    def _inv_sqrt_rank(self, grads):
        """Per slice 1 / sqrt(min(d_out, d_in)), cached per set of shapes (the lower clamp of sigma)."""
        key = tuple(tuple(g.shape) for g in grads) + (grads[0].device,)
        hit = getattr(self, "_rank_cache", None)
        if hit is None or hit[0] != key:
            rank = torch.cat([torch.full((agd_ops.slices_of(g),), float(min(g.shape[0], g.shape[1])),
                                         dtype=torch.float64) for g in grads])
            hit = self._rank_cache = (key, rank.rsqrt().to(grads[0].device))
        return hit[1]

    def _sigmas_fused(self, states, grads, power):
        """One power iteration on the native layout with the fused ops: g v together with the sums of squares
        (pass A), u <- g v / |g v| for every row of every tensor in one call, g^T u (one more read), then
        v <- g^T u / |g^T u| likewise; u and v are updated in place in the state (a zero row keeps its vector,
        so a zero gradient leaves u, v as they were). The two half-step estimates decide convergence; only the
        tensors with slices that have not settled continue with batched iterations."""
        agd_gv, agd_gtu, normalize = power
        us, vs = [st["u"] for st in states], [st["v"] for st in states]
        sq, gv = agd_gv(list(grads), vs)
        s_b = normalize(gv, us)
        s_a = normalize(agd_gtu(list(grads), us), vs)
        f = sq.sqrt()
        sigma = s_a
        iters = [1] * len(grads)
        if self._max_iter > 1:
            unsettled = ((s_a - s_b).abs() > self._tol * s_a) & (f > 0)
            # (a traced step cannot branch on device values: it continues every tensor, keeping the settled slices
            # as they are, which gives the same values)
            compiling = torch.compiler.is_compiling()
            if compiling or bool(unsettled.any()):
                # the rare case: continue the tensors that have unsettled slices with batched iterations
                sigma = sigma.clone()
                flags = None if compiling else unsettled.tolist()
                r0 = 0
                for t, (st, g) in enumerate(zip(states, grads)):
                    S = st["u"].shape[0]
                    if compiling or any(flags[r0:r0 + S]):
                        done = ~unsettled[r0:r0 + S]
                        u, v = st["u"], st["v"]
                        mat = agd_ops.as_slices(g if g.dtype == torch.float64 else g.float())
                        (sig2,), (u2,), (v2,), (k,) = agd_ops.power_iteration([mat], [u], [v], tol=self._tol,
                                                                              max_iter=self._max_iter - 1)
                        sigma[r0:r0 + S] = torch.where(done, sigma[r0:r0 + S], sig2.to(torch.float64))
                        u.copy_(torch.where(done.unsqueeze(1), u, u2.to(torch.float64)))
                        v.copy_(torch.where(done.unsqueeze(1), v, v2.to(torch.float64)))
                        iters[t] += k
                    r0 += S
        sigma = torch.where(f > 0, torch.minimum(torch.maximum(sigma, f * self._inv_sqrt_rank(grads)), f),
                            torch.zeros_like(f))
        self.last_iterations = iters
        return sq, sigma

    def _sigmas(self, states, grads):
        """The batched PyTorch power iteration (agd_ops.power_iteration) from the state's u, v, which are
        updated in place."""
        mats = [agd_ops.as_slices(g if g.dtype == torch.float64 else g.float()) for g in grads]
        sig, us2, vs2, iters = agd_ops.power_iteration(mats, [st["u"] for st in states], [st["v"] for st in states],
                                                       tol=self._tol, max_iter=self._max_iter)
        self.last_iterations = iters
        for st, u, v in zip(states, us2, vs2):
            st["u"].copy_(u)
            st["v"].copy_(v)
        return [s.to(torch.float64) for s in sig]
