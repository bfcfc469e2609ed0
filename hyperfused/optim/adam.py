"""Adam as a level of a hypergradient tower (the paper's ``Adam`` and ``AdamBaydin``)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

from ._checks import BetasValues, check_nonneg
from .base import HyperOptimizer, ParamsT


class Adam(BetasValues, HyperOptimizer):
    """Hypergradient Adam; with no level above, torch.optim.Adam.

    ``m_0 = 0``, ``v_0 = initial_exp_avg_sq`` (0, as torch; the paper's package starts at ``eps``), bias
    corrections ``1 - beta^t`` with ``t`` counted per tensor, ``x' = x - lr * mh / (sqrt(vh) + eps)``. With a level above it learns ``lr`` (raw, unconstrained) and the
    betas (raw ``atanh(2 beta - 1)``); ``learn=("lr",)`` is the paper's Adam^alpha (AdamBaydin).

    Args:
        params: the model's parameters (level 0), or None for a level of a tower.
        lr: learning rate (>= 0). betas: (beta1, beta2) in [0, 1), strictly inside (0, 1) when learned.
        eps: term added to the denominator.
        initial_exp_avg_sq: the initial value of every element of v (>= 0). 0 is torch's Adam;
            ``initial_exp_avg_sq=eps`` is the paper's package (its guard against sqrt at 0).
        hyper, learn ("lr", "beta1", "beta2"), per_tensor, backend: as for :class:`hyperfused.SGD`.
    """

    kind = "adam"
    _torch_only = {"amsgrad": False, "differentiable": False}

    def __init__(self, params: Optional[ParamsT] = None, lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, *, foreach: Optional[bool] = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False, fused: Optional[bool] = None,
                 decoupled_weight_decay: bool = False, initial_exp_avg_sq: float = 0.0,
                 hyper: Optional[HyperOptimizer] = None, learn: Optional[Sequence[str]] = None,
                 per_tensor: bool = False, backend: str = "auto",
                 one_pass: bool = False) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{type(self).__name__}: betas must be a pair (beta1, beta2), got {betas!r}")
        # torch's positional order; what is not implemented (amsgrad, differentiable) is refused, never ignored
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                        foreach=foreach, maximize=maximize, capturable=capturable, differentiable=differentiable,
                        fused=fused, decoupled_weight_decay=decoupled_weight_decay,
                        initial_exp_avg_sq=initial_exp_avg_sq, learn=None if learn is None else tuple(
                            [learn] if isinstance(learn, str) else learn), per_tensor=per_tensor)
        self._setup(params, defaults, hyper, learn, per_tensor, backend, one_pass)

    @classmethod
    def _cfg_from(cls, d: Dict[str, Any], values: Dict[str, float]) -> Dict[str, Any]:
        check_nonneg(d["eps"], "eps", "Adam")
        check_nonneg(d["initial_exp_avg_sq"], "initial_exp_avg_sq", "Adam")
        return {"eps": float(d["eps"]), "initial_exp_avg_sq": float(d["initial_exp_avg_sq"])}



class AdamW(Adam):
    """Hypergradient AdamW; with no level above, torch.optim.AdamW: Adam with decoupled weight decay,
    ``x' = x (1 - lr weight_decay) - lr mh / (sqrt(vh) + eps)`` (torch's order: the decay first, with the lr of
    this step). With a level above it learns ``lr`` and the betas as :class:`hyperfused.Adam` does; the lr's
    Jacobian includes the decay's term, ``J_lr = -(u + weight_decay x)`` (docs/MATH.md §4.6). ``weight_decay`` is
    learned too when ``learn`` names it (``J_weight_decay = -lr x``; kept >= 0).

    Args: as :class:`hyperfused.Adam`, with torch's AdamW default ``weight_decay=1e-2``.
    """

    def __init__(self, params: Optional[ParamsT] = None, lr: float = 1e-3,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, *, maximize: bool = False, foreach: Optional[bool] = None,
                 capturable: bool = False, differentiable: bool = False, fused: Optional[bool] = None,
                 initial_exp_avg_sq: float = 0.0,
                 hyper: Optional[HyperOptimizer] = None, learn: Optional[Sequence[str]] = None,
                 per_tensor: bool = False, backend: str = "auto", one_pass: bool = False) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, initial_exp_avg_sq=initial_exp_avg_sq, hyper=hyper,
                         learn=learn, per_tensor=per_tensor, backend=backend, one_pass=one_pass)
