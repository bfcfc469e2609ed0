"""SGD (with momentum, and with one learning rate per tensor) as a level of a hypergradient tower."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from ._checks import _num, check_flag, check_nonneg
from .base import HyperOptimizer, ParamsT


class SGD(HyperOptimizer):
    """Hypergradient SGD: the paper's ``SGD`` (and ``SGDPerParam`` with ``per_tensor=True``).

    Update (torch.optim.SGD's): ``x' = x - lr * g``; with momentum ``buf = momentum * buf + (1 - dampening) * g``
    (``buf_1 = g``) and ``x' = x - lr * buf``, or with ``nesterov=True`` ``x' = x - lr * (g + momentum * buf)``.
    With a level above (``hyper=``) it learns ``lr``, and ``momentum`` when it starts non-zero.

    Args:
        params: the model's parameters (level 0 of a tower), or None for a level of a tower.
        lr: learning rate (>= 0). momentum: momentum factor (>= 0; learned raw, unconstrained).
        dampening, nesterov: torch's (Nesterov needs momentum > 0 and dampening 0). Both are fixed once the
            optimizer exists (dampening adds a per-tensor step count to the state, Nesterov's lr hypergradient a
            kept gradient). weight_decay, maximize: torch's (L2 decay on the gradient, gradient ascent).
        hyper: the level above, an optimizer constructed without params, or None.
        learn: names this level learns ("lr", "momentum"); default: the paper's.
        per_tensor: one learned lr per tensor (level 0) or per entry of the vector below (levels above).
            ``param_groups[i]["lr"]`` then holds the mean of the tensors' lrs.
        backend: "auto" (the C++ kernels for CPU tensors when built, else the reference), "reference",
            "cpu", "cuda" or "triton".
        one_pass: level 0 only. False (default): the paper's algorithm, two passes over memory per step
            (the hypergradient reduction, then the update with the new hyperparameters). True: one pass that
            updates with the current hyperparameters and sums the hypergradient at the same time, so the
            learned hyperparameters act one step late (a different algorithm, cheaper in memory traffic).
            In one-pass mode a non-finite gradient still skips the whole step; a non-finite hypergradient
            (with finite gradients) leaves every hyperparameter and level above as it was and counts as
            skipped, but that step's weight update, made with the previous finite hyperparameters, stands.
    """

    kind = "sgd"
    _torch_only = {"differentiable": False}
    _STRUCTURAL = HyperOptimizer._STRUCTURAL + ("dampening", "nesterov")

    def __init__(self, params: Optional[ParamsT] = None, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, *,
                 maximize: bool = False, foreach: Optional[bool] = None, differentiable: bool = False,
                 fused: Optional[bool] = None,
                 hyper: Optional[HyperOptimizer] = None, learn: Optional[Sequence[str]] = None,
                 per_tensor: bool = False, backend: str = "auto",
                 one_pass: bool = False) -> None:
        # torch's positional order; what is not implemented (differentiable) is refused
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
                        maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused,
                        learn=None if learn is None else tuple([learn] if isinstance(learn, str) else learn),
                        per_tensor=per_tensor)
        self._setup(params, defaults, hyper, learn, per_tensor, backend, one_pass)

    @classmethod
    def _cfg_from(cls, d: Dict[str, Any], values: Dict[str, float]) -> Dict[str, Any]:
        momentum = float(d["momentum"]) != 0.0
        nesterov = check_flag(d.get("nesterov", False), "nesterov", "SGD")
        dampening = _num(d.get("dampening", 0.0), "dampening", "SGD")
        if nesterov and (float(d["momentum"]) <= 0 or dampening != 0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening = 0 (torch.optim.SGD's rule); "
                             f"got momentum={d['momentum']!r}, dampening={d.get('dampening', 0.0)!r}")
        # (without momentum, dampening and Nesterov change nothing, as in torch)
        return {"momentum": momentum, "dampening": dampening if momentum else 0.0,
                "nesterov": 1.0 if nesterov and momentum else 0.0}

    @classmethod
    def _default_learn(cls, values: Dict[str, float]) -> Tuple[str, ...]:
        return ("lr", "momentum") if float(values["momentum"]) != 0.0 else ("lr",)

    @classmethod
    def _check_values(cls, values, learned, where) -> None:
        check_nonneg(values["lr"], "lr", where)
        check_nonneg(values["momentum"], "momentum", where)
        if "momentum" in learned and float(values["momentum"]) == 0.0:
            raise ValueError(f"{where}: cannot learn momentum that starts at 0 (SGD without momentum has no "
                             f"momentum buffer); give momentum > 0 or drop 'momentum' from learn=")
