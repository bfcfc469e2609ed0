"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") as a level of a hypergradient tower."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from ._checks import BetasValues
from .base import HyperOptimizer, ParamsT


class Lion(BetasValues, HyperOptimizer):
    """Hypergradient Lion; with no level above, the Lion of its paper (torch has none):

    ``c = beta1 m + (1 - beta1) g``, ``x' = x (1 - lr weight_decay) - lr sign(c)``, ``m' = beta2 m + (1 - beta2) g``
    (``m_0 = 0``; the decay is decoupled, first, with this step's lr). With a level above it learns ``lr``: the
    Jacobian is ``J_lr = -(sign(c) + weight_decay x)`` (docs/MATH.md §4.7). The betas act through the sign only
    (their Jacobian is zero almost everywhere) and cannot be learned; ``weight_decay`` is learned when ``learn``
    names it (``J_weight_decay = -lr x``; kept >= 0).

    State: ``exp_avg`` (m), and when the lr is learned ``prev_sign``, the last update's sign(c) kept for the
    Jacobian (float, in the math dtype: 4 bytes per element; see docs/MATH.md §4.7 for why not 1 byte).

    Args:
        params, lr (>= 0; default 1e-4, the paper's advice of 3-10x below AdamW's), betas ((beta1, beta2) in
        [0, 1)), weight_decay (>= 0), maximize, hyper, learn ("lr", "weight_decay"), per_tensor, backend,
        one_pass: as for :class:`hyperfused.Adam`.
    """

    kind = "lion"
    _decoupled = True

    def __init__(self, params: Optional[ParamsT] = None, lr: float = 1e-4, betas: Tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, maximize: bool = False, hyper: Optional[HyperOptimizer] = None,
                 learn: Optional[Sequence[str]] = None, per_tensor: bool = False, backend: str = "auto",
                 one_pass: bool = False) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"Lion: betas must be a pair (beta1, beta2), got {betas!r}")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, maximize=maximize,
                        learn=None if learn is None else tuple([learn] if isinstance(learn, str) else learn),
                        per_tensor=per_tensor)
        self._setup(params, defaults, hyper, learn, per_tensor, backend, one_pass)
