"""Adagrad as a level of a hypergradient tower (the paper's ``AdaGrad``)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from ._checks import check_nonneg
from .base import HyperOptimizer, ParamsT


class Adagrad(HyperOptimizer):
    """Hypergradient Adagrad: ``G = G + g^2`` (``G_0 = initial_accumulator_value``, 0.1 as in the paper's
    package), ``x' = x - lr * g / sqrt(G + eps)``; learns ``lr`` when a level stands above it.

    Args:
        params, lr (>= 0), eps (1e-10), initial_accumulator_value (0.1), hyper, learn ("lr",), per_tensor,
        backend: as for :class:`hyperfused.SGD`.
    """

    kind = "adagrad"
    hyper_names = ("lr",)

    def __init__(self, params: Optional[ParamsT] = None, lr: float = 0.01, eps: float = 1e-10,
                 initial_accumulator_value: float = 0.1, *, hyper: Optional[HyperOptimizer] = None,
                 learn: Optional[Sequence[str]] = None, per_tensor: bool = False, backend: str = "auto",
                 one_pass: bool = False) -> None:
        defaults = dict(lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value,
                        learn=None if learn is None else tuple([learn] if isinstance(learn, str) else learn),
                        per_tensor=per_tensor)
        self._setup(params, defaults, hyper, learn, per_tensor, backend, one_pass)

    @classmethod
    def _cfg_from(cls, d: Dict[str, Any], values: Dict[str, float]) -> Dict[str, Any]:
        check_nonneg(d["eps"], "eps", "Adagrad")
        check_nonneg(d["initial_accumulator_value"], "initial_accumulator_value", "Adagrad")
        return {"eps": float(d["eps"]), "initial_accumulator_value": float(d["initial_accumulator_value"])}

    @classmethod
    def _check_values(cls, values, learned, where) -> None:
        check_nonneg(values["lr"], "lr", where)
