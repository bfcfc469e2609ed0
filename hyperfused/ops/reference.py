"""Pure-PyTorch reference versions of every hypergradient op: the oracle the kernels are tested against.

Each optimizer *kind* (hyperfused.kinds: "sgd", "adam", "rmsprop", "adagrad") has its state described by the
kinds table (``init_state`` builds it from there) and its math by two element-wise functions (docs/MATH.md
§3-§4):

``init_state(kind, x, cfg, learned)``
    the per-element state a tensor starts with;
``update(x, g, st, hp, cfg, learned) -> (x_new, st_new)``
    one step of the optimizer with hyperparameter *values* ``hp`` (0-dim tensors or tensors that broadcast
    against ``x``); ``st_new`` also holds whatever the next step needs to rebuild the Jacobian;
``jac(st, hp, raw, cfg, learned) -> {name: J}``
    the one-step-deep Jacobian d x'/d r of the *last* update with respect to each learned raw
    hyperparameter r, rebuilt from the state that update left behind (docs/MATH.md §4) and the values it used.

The same functions serve level 0 (model tensors) and the levels above (the small vector of the raw
hyperparameters of the level below), so the tower's scalar steps and the model-sized passes share one
formula. Values are computed in ``x``'s (math) dtype; callers upcast reduced-precision tensors.
"""
from __future__ import annotations

import functools
import math
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from .. import kinds

Tensor = torch.Tensor


def inplace(t: Tensor) -> Tensor:
    """What an in-place write to the optimizer's tensor ``t`` goes through: a one-element view of a 0-dim tensor,
    ``t`` itself otherwise. Under torch.compile (AOTAutograd; torch 2.13) a write straight into a 0-dim float64
    graph input is lost (tests/test_compile.py reproduces it without hyperfused); through a view it is kept."""
    return t.view(1) if t.dim() == 0 else t


def copy_all(dst: List[Tensor], src: List[Tensor]) -> None:
    """dst[i].copy_(src[i]) for every i: one multi-tensor op (a loop of copies in torch before 2.1)."""
    copy = getattr(torch, "_foreach_copy_", None)
    if copy is not None:
        copy(dst, src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


State = Dict[str, Tensor]


# --------------------------------------------------------------------------------------------------------
# Parametrisations (raw r -> value c = phi(r)) used for learned hyperparameters.
# --------------------------------------------------------------------------------------------------------
def sigma(r: Tensor) -> Tensor:
    """(tanh r + 1) / 2: the package's ``clamp`` for betas and RMSprop's gamma."""
    if r.device.type == "cpu" and not r.requires_grad and not torch.compiler.is_compiling():
        one, two = _one_two(r.dtype)       # the same values as the Python numbers, without wrapping them per call
        return r.tanh().add_(one).div_(two)    # (in place on tanh's new tensor: the same arithmetic, fewer allocations)
    return (r.tanh() + 1.0) / 2.0


_ONE_TWO: Dict[torch.dtype, Tuple[Tensor, Tensor]] = {}


def _one_two(dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    c = _ONE_TWO.get(dtype)
    if c is None:
        with torch.inference_mode(False), torch.no_grad():
            c = _ONE_TWO[dtype] = (torch.ones((), dtype=dtype), torch.full((), 2.0, dtype=dtype))
    return c


def dsigma(r: Union[Tensor, float]) -> Union[Tensor, float]:
    """d sigma / d r = (1 - tanh^2 r) / 2 (of a tensor, or of a host number in float64)."""
    t = r.tanh() if isinstance(r, Tensor) else math.tanh(r)
    return (1.0 - t * t) / 2.0


def sigma_inv(c: Tensor) -> Tensor:
    """The package's ``unclamp``: atanh(2c - 1) written as log((1+z)/(1-z))/2."""
    z = c * 2.0 - 1.0
    return ((1.0 + z) / (1.0 - z)).log() / 2.0


# parametrisation (hyperfused.kinds) -> (raw -> value, value -> raw); a kind's table says which one each
# learned hyperparameter has
PARAMETRISATIONS = {
    kinds.IDENTITY: (lambda r: r, lambda c: c),
    kinds.SIGMA: (sigma, sigma_inv),
    kinds.SQUARE: (lambda a: a * a, lambda c: c.sqrt()),
}


def to_value(kind: str, name: str, raw: Tensor) -> Tensor:
    return PARAMETRISATIONS[kinds.KINDS[kind].parametrisation(name)][0](raw)


def to_raw(kind: str, name: str, value: Tensor) -> Tensor:
    return PARAMETRISATIONS[kinds.KINDS[kind].parametrisation(name)][1](value)


def init_state(kind: str, x: Tensor, cfg: dict, learned: Sequence[str]) -> State:
    """The state a tensor ``x`` starts with: the kind's element-wise arrays (hyperfused.kinds, in the kernels'
    order; 0 or the cfg value the table names) and its step count, if it keeps one."""
    spec = kinds.KINDS[kind]
    st: State = {}
    if spec.counts_steps(cfg):
        st["step"] = torch.zeros((), dtype=x.dtype, device=x.device)
    for slot in spec.slots:
        if slot.when(cfg, learned):
            st[slot.name] = torch.zeros_like(x) + cfg.get(slot.init, 0.0) if slot.init else torch.zeros_like(x)
    return st


# --------------------------------------------------------------------------------------------------------
# SGD (with or without momentum).  cfg: {"momentum": bool, "dampening": float, "nesterov": 0 or 1} (torch's)
# --------------------------------------------------------------------------------------------------------
def sgd_update(x: Tensor, g: Tensor, st: State, hp: Dict[str, Tensor], cfg: dict,
               learned: Sequence[str]) -> Tuple[Tensor, State]:
    """buf_1 = g, buf_t = mu buf_{t-1} + (1 - dampening) g; x' = x - lr d with d = buf_t, or with Nesterov's
    momentum d = g + mu buf_t (torch.optim.SGD; Nesterov needs dampening 0)."""
    new: State = {}
    if cfg["momentum"]:
        buf = st["momentum_buffer"]
        if "step" in st:                         # dampening: the first step takes g whole (buf_1 = g)
            t = st["step"] + 1
            new["step"] = t
            one = torch.ones((), dtype=g.dtype, device=g.device)
            nbuf = buf * hp["momentum"] + g * torch.where(t == 1, one, one - float(cfg["dampening"]))
        else:
            nbuf = buf * hp["momentum"] + g      # buf_1 = g exactly, since buf_0 = 0
        new["momentum_buffer"] = nbuf
        if "momentum" in learned:
            new["prev_momentum_buffer"] = buf
        if "prev_grad" in st:                     # Nesterov learning lr: J_lr needs g
            new["prev_grad"] = g
        d = g + nbuf * hp["momentum"] if cfg.get("nesterov") else nbuf
        return x - d * hp["lr"], new
    if "lr" in learned:
        new["prev_grad"] = g
    return x - g * hp["lr"], new


def sgd_jac(st: State, hp: Dict[str, Tensor], raw: Dict[str, Tensor], cfg: dict,
            learned: Sequence[str]) -> Dict[str, Tensor]:
    """J_lr = -d; J_mu = -lr buf_{t-1} (d = buf_t), or -lr (buf_t + mu buf_{t-1}) with Nesterov's d."""
    J: Dict[str, Tensor] = {}
    if cfg["momentum"]:
        nesterov = bool(cfg.get("nesterov"))
        buf = st["momentum_buffer"]
        if "lr" in learned:
            J["lr"] = -(st["prev_grad"] + buf * hp["momentum"]) if nesterov else -buf
        if "momentum" in learned:
            prev = st["prev_momentum_buffer"]
            J["momentum"] = -hp["lr"] * (buf + hp["momentum"] * prev if nesterov else prev)
    elif "lr" in learned:
        J["lr"] = -st["prev_grad"]
    return J


# --------------------------------------------------------------------------------------------------------
# Adagrad and RMSprop divide by D(s) = sqrt(s + eps_root) + eps: torch's optimizers add eps outside the root
# (cfg eps_root = 0), the paper's package inside (cfg eps = 0, eps_root = its eps); the classes decide which.
def _root(s: Tensor, cfg: dict) -> Tensor:
    return (s + cfg.get("eps_root", 0.0)).sqrt()


def _den(s: Tensor, cfg: dict) -> Tensor:
    return _root(s, cfg) + cfg["eps"]


# --------------------------------------------------------------------------------------------------------
# Adagrad.  cfg: {"eps": 1e-10, "initial_accumulator_value": 0.0 (torch's; the paper's package: 0.1)}
# --------------------------------------------------------------------------------------------------------
def adagrad_update(x, g, st, hp, cfg, learned):
    G = st["sum"] + g * g
    new: State = {"sum": G}
    if learned:
        new["prev_grad"] = g
    return x - hp["lr"] * g / _den(G, cfg), new


def adagrad_jac(st, hp, raw, cfg, learned):
    if "lr" not in learned:
        return {}
    return {"lr": -st["prev_grad"] / _den(st["sum"], cfg)}


# --------------------------------------------------------------------------------------------------------
# RMSprop.  lr = a^2 (raw a), alpha (the paper's gamma) = sigma(q).  cfg: {"eps": 1e-8, "eps_root": 0}
# --------------------------------------------------------------------------------------------------------
def rmsprop_update(x, g, st, hp, cfg, learned):
    gamma = hp["alpha"]
    s = gamma * st["square_avg"] + (1.0 - gamma) * (g * g)
    new: State = {"square_avg": s}
    if learned:
        new["prev_grad"] = g
    return x - hp["lr"] * g / _den(s, cfg), new


def rmsprop_jac(st, hp, raw, cfg, learned):
    J: Dict[str, Tensor] = {}
    g = st["prev_grad"]
    s = st["square_avg"]
    R = _root(s, cfg)
    D = R + cfg["eps"]
    if "lr" in learned:
        J["lr"] = -2.0 * raw["lr"] * g / D
    if "alpha" in learned:
        gamma = hp["alpha"]
        s_prev_minus_g2 = (s - g * g) / gamma          # s_{t-2} - g_{t-1}^2;  dD/dgamma = (s_{t-2} - g^2) / (2R)
        term = hp["lr"] * g * s_prev_minus_g2 / (2.0 * R * D * D) * dsigma(raw["alpha"])
        J["alpha"] = torch.where(R > 0, term, torch.zeros_like(term))
    return J


# --------------------------------------------------------------------------------------------------------
# Adam.  beta_i = sigma(b_i) when learned.  cfg: {"eps": 1e-8, "initial_exp_avg_sq": 0.0 (torch's; the paper's
# package starts v at eps)}
# --------------------------------------------------------------------------------------------------------
def _f64(b):
    return b.double() if isinstance(b, Tensor) else float(b)


def _complement(b, dt) -> Tensor:
    """1 - b in float64, rounded once to ``dt`` (b: a number given exactly, or a learned value's tensor), as
    torch computes 1 - beta in double; the kernels do the same (hyper_math.h row_scalars_of)."""
    return torch.as_tensor(1.0 - _f64(b), dtype=torch.float64).to(dt)


def _bias(b, t: Tensor, dt) -> Tensor:
    """The bias correction 1 - b^t in float64, rounded once to ``dt`` (torch's are computed in double)."""
    return (1.0 - _f64(b) ** t.double()).to(dt)


def adam_update(x, g, st, hp, cfg, learned):
    b1, b2, eps = hp["beta1"], hp["beta2"], cfg["eps"]
    t = st["step"] + 1
    m = b1 * st["exp_avg"] + _complement(b1, g.dtype) * g
    v = b2 * st["exp_avg_sq"] + _complement(b2, g.dtype) * g * g
    mh = m / _bias(b1, t, g.dtype)
    vh = v / _bias(b2, t, g.dtype)
    u = mh / (vh ** 0.5 + eps)
    new: State = {"step": t, "exp_avg": m, "exp_avg_sq": v}
    if "prev_grad" in st:
        new["prev_grad"] = g
    return x - hp["lr"] * u, new


def adam_jac(st, hp, raw, cfg, learned):
    b1, b2, lr, eps = hp["beta1"], hp["beta2"], hp["lr"], cfg["eps"]
    t = st["step"]
    m, v = st["exp_avg"], st["exp_avg_sq"]
    c1 = _bias(b1, t, m.dtype)
    c2 = _bias(b2, t, m.dtype)
    mh = m / c1
    S = (v / c2).sqrt()
    den = S + eps
    J: Dict[str, Tensor] = {}
    if "lr" in learned:
        J["lr"] = -(mh / den)
    # at the first step mh = g whatever beta1, and vh = g^2 whatever beta2 when v starts at 0: those Jacobians are
    # exactly 0, where the formulas below would give the round-off of two nearly equal terms (docs/MATH.md §4.4)
    first = t == 1
    if "beta1" in learned:
        g = st["prev_grad"]
        dmh = (m - g) / b1 / c1 + m * t * b1 ** (t - 1) / (c1 * c1)
        term = -lr * dmh / den * dsigma(raw["beta1"])
        J["beta1"] = torch.where(first, torch.zeros_like(term), term)
    if "beta2" in learned:
        g = st["prev_grad"]
        dvh = (v - g * g) / b2 / c2 + v * t * b2 ** (t - 1) / (c2 * c2)
        term = lr * mh / (den * den) / (2.0 * S) * dvh * dsigma(raw["beta2"])
        zero = (S <= 0) | (first & (cfg.get("initial_exp_avg_sq", 0.0) == 0))
        J["beta2"] = torch.where(zero, torch.zeros_like(term), term)
    return J


# --------------------------------------------------------------------------------------------------------
# Lion.  c = beta1 m + (1 - beta1) g, x' = x - lr sign(c), m' = beta2 m + (1 - beta2) g (its decoupled weight decay
# is the optimizer's, docs/MATH.md §4.6); J_lr = -sign(c) of the last update, kept as prev_sign
# --------------------------------------------------------------------------------------------------------
def lion_update(x, g, st, hp, cfg, learned):
    b1, b2 = hp["beta1"], hp["beta2"]
    m = st["exp_avg"]
    s = torch.sign(b1 * m + (1.0 - b1) * g)
    new: State = {"exp_avg": b2 * m + (1.0 - b2) * g}
    if "prev_sign" in st:
        new["prev_sign"] = s
    return x - hp["lr"] * s, new


def lion_jac(st, hp, raw, cfg, learned):
    return {"lr": -st["prev_sign"]} if "lr" in learned else {}


_FORMULAS = {
    "sgd": (sgd_update, sgd_jac),
    "adam": (adam_update, adam_jac),
    "rmsprop": (rmsprop_update, rmsprop_jac),
    "adagrad": (adagrad_update, adagrad_jac),
    "lion": (lion_update, lion_jac),
}
# kind -> (init_state, update, jac); every kind of hyperfused.kinds has its formulas here
KINDS = {name: (functools.partial(init_state, name),) + _FORMULAS[name] for name in kinds.KINDS}


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 parameters do their math in float64; everything else in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------------------
# The two level-0 passes as ops (multi-tensor, one param group).
# --------------------------------------------------------------------------------------------------------
def hyper_reduce(kind: str, cfg: dict, learned: Sequence[str], per_tensor_lr: bool,
                 grads: List[Tensor], states: List[State], valid: List[Tensor],
                 hp: Dict[str, Tensor], raw: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Tensor]:
    """Pass A: level-0 hypergradients and the non-finite flag.

    Returns ``(delta, finite)`` where ``delta[name]`` is sum(g_t * J_name) over the group (a vector with one
    entry per tensor for "lr" when ``per_tensor_lr``), J rebuilt from each tensor's state (``valid[i]``, a
    0-dim bool tensor, False: the tensor did not move at its last step, so J is zero), and ``finite`` a
    0-dim bool tensor that
    is False when any gradient holds NaN or Inf.
    """
    jac = KINDS[kind][2]
    dt = hp["lr"].dtype
    dev = hp["lr"].device
    n = len(grads)
    per = {name: torch.zeros(n, dtype=dt, device=dev) for name in learned}
    finite = torch.ones((), dtype=torch.bool, device=dev)
    for i, g in enumerate(grads):
        finite = finite & torch.isfinite(g).all()
        if not learned:
            continue
        gm = g.to(dt)
        hpi = _tensor_hp(hp, i, per_tensor_lr)
        rawi = _tensor_hp(raw, i, per_tensor_lr)
        for name, J in jac(states[i], hpi, rawi, cfg, learned).items():
            d = (gm * J).sum()
            per[name][i] = torch.where(valid[i], d, torch.zeros_like(d))
    delta = {name: (v if (name == "lr" and per_tensor_lr) else v.sum()) for name, v in per.items()}
    return delta, finite


def hyper_update(kind: str, cfg: dict, learned: Sequence[str], per_tensor_lr: bool,
                 params: List[Tensor], grads: List[Tensor], states: List[State],
                 hp: Dict[str, Tensor], ok: Tensor, raw: Optional[Dict[str, Tensor]] = None,
                 jac: Optional[Tuple[Dict[str, Tensor], Dict[str, Tensor], Sequence[Tensor]]] = None,
                 decay: Optional[Tensor] = None):
    """Pass B: apply the update with the new hyperparameters, in place, only where ``ok`` (0-dim bool).

    One-pass mode passes ``jac = (values, raw values, valid flags)`` of the last update: pass A's result
    from the state before this update is then returned as ``(delta, finite)``. ``decay``: lr * weight_decay of
    a decoupled weight decay (one value, or one per tensor): x is multiplied by 1 minus it, in the math dtype,
    before the kind's step (docs/MATH.md §4.6).
    """
    result = None
    if jac is not None:
        jhp, jraw, jvalid = jac
        result = hyper_reduce(kind, cfg, learned, per_tensor_lr, grads, states, list(jvalid), jhp, jraw)
    update = KINDS[kind][1]
    dt = hp["lr"].dtype
    for i, (p, g) in enumerate(zip(params, grads)):
        x = p.detach().to(dt)
        xd = x if decay is None else x * (1.0 - (decay[i] if decay.dim() else decay))
        xn, new = update(xd, g.to(dt), states[i], _tensor_hp(hp, i, per_tensor_lr), cfg, learned)
        p.detach().copy_(torch.where(ok, xn, x).to(p.dtype))
        _commit_state(states[i], new, ok)
    return result


def _commit_state(st: State, new: State, ok: Tensor) -> None:
    """``st[k] = where(ok, new[k], st[k])`` for every key; all values are computed before any is written,
    because a new value may alias an old state tensor (e.g. SGD's previous momentum buffer)."""
    vals = {key: torch.where(ok, val.to(st[key].dtype), st[key]) for key, val in new.items()}
    for key, val in vals.items():
        inplace(st[key]).copy_(val)


def _tensor_hp(hp: Dict[str, Tensor], i: int, per_tensor_lr: bool) -> Dict[str, Tensor]:
    if not per_tensor_lr or "lr" not in hp:
        return hp
    out = dict(hp)
    out["lr"] = hp["lr"][i]
    return out


def multi_tensor_dot(a: Iterable[Tensor], b: Iterable[Tensor]) -> Tensor:
    """Per-pair dot products sum(a_i * b_i), accumulated in float64 (reference for the C++ op)."""
    out = [(x.double() * y.double()).sum() for x, y in zip(a, b)]
    if not out:
        return torch.zeros(0, dtype=torch.float64)
    return torch.stack(out)


# --------------------------------------------------------------------------------------------------------
# The levels above level 0 (docs/MATH.md §1.2 steps 2-4): the Python tower, the oracle of the compiled and Triton
# towers. ``levels[k]`` = {"hp": {name: raw value tensor}, "state": {...}} (k >= 1 also a "valid" flag);
# ``specs[k]`` = (level optimizer, initial values, learned names, per_tensor, cfg).
# --------------------------------------------------------------------------------------------------------
def _flatten(d: Dict[str, Tensor], names: Sequence[str]) -> Tensor:
    return torch.cat([d[name].reshape(-1) for name in names])


def _unflatten(x: Tensor, like: Dict[str, Tensor], names: Sequence[str]) -> Dict[str, Tensor]:
    out, pos = {}, 0
    for name in names:
        n = like[name].numel()
        out[name] = x[pos:pos + n].reshape(like[name].shape)
        pos += n
    return out


def _level_values(spec, hp: Dict[str, Tensor]) -> Dict[str, Tensor]:
    lv, _, learned, _, _ = spec
    return {name: to_value(lv.kind, name, t) if name in learned else t for name, t in hp.items()}


def tower_plan(levels, specs, d0_flat: Tensor, finite: Tensor) -> Dict[str, object]:
    """Tentative step of every level above level 0 from level 0's flat hypergradient ``d0_flat`` (its learned
    names in order): bottom-up hypergradients, then top-down updates with the new values. Returns
    {"new_hp", "new_state", "ok"}; nothing the tower holds is written (``tower_commit`` does that)."""
    deltas: List[Tensor] = [d0_flat]
    for k in range(1, len(specs) - 1):
        lv, _, learned, per, cfg = specs[k]
        rec = levels[k]
        g = deltas[k - 1]
        J = KINDS[lv.kind][2](rec["state"], _level_values(specs[k], rec["hp"]), rec["hp"], cfg, learned)
        dk = []
        for name in learned:
            contrib = g * J[name]
            d = contrib if (name == "lr" and per) else contrib.sum()
            dk.append(torch.where(rec["state"]["valid"], d, torch.zeros_like(d)).reshape(-1))
        deltas.append(torch.cat(dk))
    ok = finite
    for d in deltas:
        ok = ok & torch.isfinite(d).all()
    new_hp = [dict(rec["hp"]) for rec in levels]
    new_state: List[Optional[State]] = [None] * len(specs)
    for k in range(len(specs) - 1, 0, -1):
        lv, _, learned, per, cfg = specs[k]
        below_learned = specs[k - 1][2]
        x = _flatten(levels[k - 1]["hp"], below_learned)
        st = {key: v for key, v in levels[k]["state"].items() if key != "valid"}
        xn, stn = KINDS[lv.kind][1](x, deltas[k - 1], st, _level_values(specs[k], new_hp[k]), cfg, learned)
        new_state[k] = stn
        for name, t in _unflatten(xn, levels[k - 1]["hp"], below_learned).items():
            new_hp[k - 1][name] = t
            ok = ok & torch.isfinite(t).all()
    return {"new_hp": new_hp, "new_state": new_state, "ok": ok}


def tower_commit(levels, new: Dict[str, object], ok: Tensor) -> None:
    """Write ``tower_plan``'s tentative step where ``ok`` (0-dim bool) is set; every level's valid |= ok."""
    for k in range(len(levels)):
        for name, t in new["new_hp"][k].items():
            old = levels[k]["hp"][name]
            if t is not old:
                inplace(old).copy_(torch.where(ok, t, old))
        stn = new["new_state"][k]
        if stn is not None:
            st = levels[k]["state"]
            _commit_state(st, stn, ok)
            st["valid"].copy_(st["valid"] | ok)
