"""RMSprop as a level of a hypergradient tower (the paper's ``RMSProp`` and ``RMSPropAlpha``)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from ._checks import check_nonneg, check_unit, eps_split
from .base import HyperOptimizer, ParamsT


class RMSprop(HyperOptimizer):
    """Hypergradient RMSprop. ``alpha`` is torch's name for the decay the paper calls gamma.

    With no level above, torch.optim.RMSprop (``momentum=0, centered=False``):
    ``s = alpha * s + (1 - alpha) * g^2`` (``s_0 = 0``), ``x' = x - lr * g / (sqrt(s) + eps)``. Learned raw
    forms: ``lr = a^2`` and ``alpha = (tanh q + 1) / 2``. Default learned set: lr and alpha;
    ``learn=("lr",)`` is the paper's RMSPropAlpha. The paper's package adds eps under the square root:
    ``eps_inside_sqrt=True``.

    Args:
        params, lr (>= 0), alpha (in [0, 1); strictly inside when learned), eps, hyper, learn ("lr",
        "alpha"), per_tensor, backend: as for :class:`hyperfused.SGD`.
        eps_inside_sqrt: ``x' = x - lr * g / sqrt(s + eps)`` (the paper's package) instead of torch's form.
    """

    kind = "rmsprop"
    _torch_only = {"momentum": 0, "centered": False, "differentiable": False}

    def __init__(self, params: Optional[ParamsT] = None, lr: float = 0.01, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 capturable: bool = False, foreach: Optional[bool] = None, maximize: bool = False,
                 differentiable: bool = False, *, eps_inside_sqrt: bool = False,
                 hyper: Optional[HyperOptimizer] = None,
                 learn: Optional[Sequence[str]] = None, per_tensor: bool = False, backend: str = "auto",
                 one_pass: bool = False) -> None:
        # torch's positional order; what is not implemented (momentum, centered, differentiable) is refused
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
                        capturable=capturable, foreach=foreach, maximize=maximize, differentiable=differentiable,
                        eps_inside_sqrt=eps_inside_sqrt, learn=None if learn is None else tuple(
                            [learn] if isinstance(learn, str) else learn), per_tensor=per_tensor)
        self._setup(params, defaults, hyper, learn, per_tensor, backend, one_pass)

    @classmethod
    def _cfg_from(cls, d: Dict[str, Any], values: Dict[str, float]) -> Dict[str, Any]:
        check_nonneg(d["eps"], "eps", "RMSprop")
        return eps_split(d)

    @classmethod
    def _check_values(cls, values, learned, where) -> None:
        check_nonneg(values["lr"], "lr", where)
        check_unit(values["alpha"], "alpha", learned, where, "alpha")
