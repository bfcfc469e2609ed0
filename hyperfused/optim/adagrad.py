"""Adagrad as a level of a hypergradient tower (the paper's ``AdaGrad``)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from ._checks import check_nonneg, eps_split
from .base import HyperOptimizer, ParamsT


class Adagrad(HyperOptimizer):
    """Hypergradient Adagrad; with no level above, torch.optim.Adagrad (``lr_decay=0``).

    ``G = G + g^2`` (``G_0 = initial_accumulator_value``), ``x' = x - lr * g / (sqrt(G) + eps)``; learns ``lr``
    when a level stands above it. The paper's package: ``initial_accumulator_value=0.1, eps_inside_sqrt=True``
    (``x' = x - lr * g / sqrt(G + eps)``).

    Args:
        params, lr (>= 0), lr_decay and weight_decay (0 only; in torch's positional order),
        initial_accumulator_value (0, as torch), eps (1e-10), hyper, learn ("lr",), per_tensor, backend: as
        for :class:`hyperfused.SGD`.
        eps_inside_sqrt: add eps under the square root (the paper's package) instead of after it (torch).
    """

    kind = "adagrad"
    _torch_only = {"lr_decay": 0, "differentiable": False}

    def __init__(self, params: Optional[ParamsT] = None, lr: float = 0.01, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                 foreach: Optional[bool] = None, *, maximize: bool = False, differentiable: bool = False,
                 fused: Optional[bool] = None, eps_inside_sqrt: bool = False,
                 hyper: Optional[HyperOptimizer] = None,
                 learn: Optional[Sequence[str]] = None, per_tensor: bool = False, backend: str = "auto",
                 one_pass: bool = False) -> None:
        # torch's positional order; what is not implemented (lr_decay, differentiable) is refused, never ignored
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach, maximize=maximize,
                        differentiable=differentiable, fused=fused, eps_inside_sqrt=eps_inside_sqrt,
                        learn=None if learn is None else tuple([learn] if isinstance(learn, str) else learn),
                        per_tensor=per_tensor)
        self._setup(params, defaults, hyper, learn, per_tensor, backend, one_pass)

    @classmethod
    def _cfg_from(cls, d: Dict[str, Any], values: Dict[str, float]) -> Dict[str, Any]:
        check_nonneg(d["eps"], "eps", "Adagrad")
        check_nonneg(d["initial_accumulator_value"], "initial_accumulator_value", "Adagrad")
        return dict(eps_split(d), initial_accumulator_value=float(d["initial_accumulator_value"]))

    @classmethod
    def _check_values(cls, values, learned, where) -> None:
        check_nonneg(values["lr"], "lr", where)
