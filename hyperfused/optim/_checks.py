"""Validation of hyperparameter values, shared by the optimizer kinds."""
from __future__ import annotations

import math
from typing import Sequence


def _num(value, name: str, where: str) -> float:
    if isinstance(value, (str, bytes)):      # float("0.1") would take it; torch's optimizers refuse it
        raise TypeError(f"{where}: {name} must be a number, got the string {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where}: {name} must be finite, got {value!r}")
    return v


def check_flag(value, name: str, where: str) -> bool:
    """A True/False option (numpy bools accepted, as torch accepts them); anything else is refused."""
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):
        value = bool(value)
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
    return value


def eps_split(d) -> dict:
    """Adagrad's and RMSprop's denominators are sqrt(s + eps_root) + eps: torch adds eps after the root, the
    paper's package (``eps_inside_sqrt=True``) under it."""
    eps = float(d["eps"])
    inside = d.get("eps_inside_sqrt", False)
    if not isinstance(inside, bool):
        raise TypeError(f"eps_inside_sqrt must be True or False, got {inside!r}")
    return {"eps": 0.0, "eps_root": eps} if inside else {"eps": eps, "eps_root": 0.0}


def check_nonneg(value, name: str, where: str) -> None:
    if _num(value, name, where) < 0:
        raise ValueError(f"{where}: {name} must be >= 0, got {value!r}")


def check_unit(value, name: str, learned: Sequence[str], where: str, key: str) -> None:
    """A decay in [0, 1); strictly inside (0, 1) when learned (its raw form is atanh(2c - 1))."""
    v = _num(value, name, where)
    if key in learned:
        if not 0.0 < v < 1.0:
            raise ValueError(f"{where}: a learned {name} must lie strictly inside (0, 1), got {value!r}")
    elif not 0.0 <= v < 1.0:
        raise ValueError(f"{where}: {name} must lie in [0, 1), got {value!r}")


class BetasValues:
    """The hyperparameters of a param group holding ``lr`` and ``betas=(beta1, beta2)`` (Adam's, Lion's): a mixin
    placed before HyperOptimizer."""

    @classmethod
    def _values_from(cls, d):
        b1, b2 = d["betas"]
        return {"lr": d["lr"], "beta1": b1, "beta2": b2}

    @classmethod
    def _check_values(cls, values, learned, where) -> None:
        check_nonneg(values["lr"], "lr", where)
        check_unit(values["beta1"], "beta1 (betas[0])", learned, where, "beta1")
        check_unit(values["beta2"], "beta2 (betas[1])", learned, where, "beta2")
