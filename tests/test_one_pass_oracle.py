"""One-pass mode (``one_pass=True``) against an independent oracle, for Jacobians that depend on the hyperparameters.

The backend tests hold "cpu" and "triton" to "reference", and "reference" runs through the same optimizer code
(base.py chooses which hyperparameters the one-pass Jacobian is evaluated with, for every backend), so a stale or
too-fresh hyperparameter in one-pass mode would pass them all. This file writes the one-pass algorithm out again,
plainly, in float64 torch ops, with no hyperfused code:

- step t updates every tensor that has a gradient with the *current* hyperparameters h_t;
- in the same pass it sums the hypergradient delta_t = sum(g_t * J), J the Jacobian of that tensor's *previous*
  update with respect to the raw hyperparameters, evaluated with the hyperparameters and the state that produced
  that update (h_{t-1}, the moments before and after it); a tensor that did not move at its previous step adds 0;
- the level above then steps h_t -> h_{t+1}, so a learned hyperparameter acts one step late.

The oracle keeps, per tensor, a record of its last update (the state before and after it, the gradient, its own
step count and the raw hyperparameters it used) and differentiates the update by hand from those, instead of
rebuilding the previous state from the new one as hyperfused does. ``test_oracle_jacobians_match_autograd``
checks those hand-written Jacobians against torch.func on the oracle's update functions.

Covered: Adam learning lr, beta1 and beta2 under SGD (per-tensor bias-correction counts: one tensor misses a
gradient), RMSprop learning lr (raw: its square root) and alpha under SGD, and momentum SGD learning lr and
momentum under Adam. Hyperparameter learning rates are large enough that the hyperparameters move by far more
than the 1e-12 tolerance between steps (checked), so using the hyperparameters of the wrong step is visible.
"""
import math

import pytest
import torch

import hyperfused as hf
from hyperfused import ops

DT = torch.float64
TOL = 1e-12
SHAPES = [(3, 4), (5,), (2, 3, 2)]
STEPS = 14
NO_GRAD = {(6, 1)}          # (step, tensor): that tensor gets no gradient at that step (Adam's test)


def _backends():
    out = [pytest.param("reference"),
           pytest.param("cpu", marks=pytest.mark.skipif(not ops.extension_available(),
                                                        reason="the C++ extension is not built"))]
    interp = not torch.cuda.is_available()            # conftest sets TRITON_INTERPRET=1 without a GPU
    out.append(pytest.param("triton", marks=pytest.mark.skipif(
        not ops.triton_available() or not interp, reason="Triton (interpreter on CPU tensors) not available")))
    return out


BACKENDS = _backends()


def _init(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=DT) for s in SHAPES]


def _grads(step, no_grad=frozenset()):
    """The gradients of one step: a direction shared by every step plus noise, so that successive gradients are
    correlated and the hypergradients (sums of g_t * J) are not tiny; None where a tensor gets no gradient."""
    g = torch.Generator().manual_seed(100 + step)
    base = torch.Generator().manual_seed(7)
    out = []
    for i, s in enumerate(SHAPES):
        d = torch.randn(*s, generator=base, dtype=DT)
        n = torch.randn(*s, generator=g, dtype=DT)
        out.append(None if (step, i) in no_grad else d + 0.7 * n)
    return out


def _sig(r):
    """Raw -> value for the betas and RMSprop's alpha: (tanh r + 1) / 2."""
    return (math.tanh(r) + 1.0) / 2.0


def _dsig(r):
    """d/dr (tanh r + 1) / 2 = 1 / (2 cosh^2 r)."""
    return 0.5 / math.cosh(r) ** 2


def _unsig(c):
    return math.atanh(2.0 * c - 1.0)


# ------------------------------------------------------------------------------------------------------------
# Level-0 update functions (differentiable in the raw hyperparameters, for the autograd check) and their
# Jacobians written out by hand from the record of the update.
# ------------------------------------------------------------------------------------------------------------
def adam_update(x, g, m0, v0, t, raw, eps):
    """One Adam step, t the tensor's step count after it; raw = (lr, atanh(2 beta1 - 1), atanh(2 beta2 - 1))."""
    lr, b1, b2 = raw[0], (torch.tanh(raw[1]) + 1) / 2, (torch.tanh(raw[2]) + 1) / 2
    m = b1 * m0 + (1 - b1) * g
    v = b2 * v0 + (1 - b2) * g * g
    mh = m / (1 - b1 ** t)
    vh = v / (1 - b2 ** t)
    return x - lr * mh / (torch.sqrt(vh) + eps), m, v


def adam_jac(rec, eps):
    """d x_new / d raw of the update described by rec (m0, v0: the moments before it, m, v: after it)."""
    m0, v0, m, v, g, t = rec["m0"], rec["v0"], rec["m"], rec["v"], rec["g"], rec["t"]
    lr, r1, r2 = rec["raw"]
    b1, b2 = _sig(r1), _sig(r2)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    mh, S = m / c1, torch.sqrt(v / c2)
    den = S + eps
    # mh = m / c1: dm/db1 = m0 - g, dc1/db1 = -t b1^(t-1)
    dmh_db1 = (m0 - g) / c1 + m * t * b1 ** (t - 1) / c1 ** 2
    dvh_db2 = (v0 - g * g) / c2 + v * t * b2 ** (t - 1) / c2 ** 2
    return [-mh / den,
            -lr * dmh_db1 / den * _dsig(r1),
            lr * mh / den ** 2 * dvh_db2 / (2 * S) * _dsig(r2)]


def rmsprop_update(x, g, s0, raw, eps):
    """raw = (sqrt(lr), atanh(2 alpha - 1))."""
    a, alpha = raw[0], (torch.tanh(raw[1]) + 1) / 2
    s = alpha * s0 + (1 - alpha) * g * g
    return x - a * a * g / torch.sqrt(s + eps), s


def rmsprop_jac(rec, eps):
    s0, s, g = rec["s0"], rec["s"], rec["g"]
    a, q = rec["raw"]
    D = torch.sqrt(s + eps)
    # ds/dalpha = s0 - g^2; d (s + eps)^(-1/2) = -(1/2) (s + eps)^(-3/2) ds
    return [-2 * a * g / D, a * a * g * (s0 - g * g) / (2 * D ** 3) * _dsig(q)]


def sgdm_update(x, g, b0, raw):
    """Momentum SGD, raw = (lr, momentum) as they are."""
    b = raw[1] * b0 + g
    return x - raw[0] * b, b


def sgdm_jac(rec):
    lr, _ = rec["raw"]
    return [-rec["b"], -lr * rec["b0"]]


# ------------------------------------------------------------------------------------------------------------
# The oracles: one-pass mode, level 0 plus the level above, step by step, in the paper's conventions (Adam's v_0 = eps,
# eps under RMSprop's root), which the optimizers under test are given.
# ------------------------------------------------------------------------------------------------------------
def _hypergrad(recs, grads, jac):
    """delta_t: each tensor with a gradient now and a record of a previous update contributes g_t . J."""
    delta = None
    for rec, g in zip(recs, grads):
        if g is None or rec is None:
            continue
        d = [float((g * J).sum()) for J in jac(rec)]
        delta = d if delta is None else [a + b for a, b in zip(delta, d)]
    return delta


def oracle_adam(lr, betas, eps, kappa, steps, stale=False):
    """hf.Adam(lr, betas, eps, hyper=hf.SGD(lr=kappa), one_pass=True). Yields (params, {lr, beta1, beta2}).
    ``stale=True``: the Jacobian evaluated with the current hyperparameters (the mutation this file guards)."""
    xs = _init()
    m = [torch.zeros_like(x) for x in xs]
    v = [torch.zeros_like(x) + eps for x in xs]           # the package's v_0 = eps
    t = [0] * len(xs)                                     # bias-correction counts, per tensor
    recs = [None] * len(xs)                               # each tensor's last update (None: did not move)
    raw = [lr, _unsig(betas[0]), _unsig(betas[1])]
    for step in range(steps):
        grads = _grads(step, NO_GRAD)
        jraw = (lambda rec: dict(rec, raw=raw)) if stale else (lambda rec: rec)
        delta = _hypergrad(recs, grads, lambda rec: adam_jac(jraw(rec), eps))
        for i, g in enumerate(grads):
            if g is None:
                recs[i] = None                            # it did not move: no Jacobian at the next step
                continue
            t[i] += 1
            x_new, m_new, v_new = adam_update(xs[i], g, m[i], v[i], t[i], torch.tensor(raw, dtype=DT), eps)
            recs[i] = dict(m0=m[i], v0=v[i], m=m_new, v=v_new, g=g, t=t[i], raw=list(raw))
            xs[i], m[i], v[i] = x_new, m_new, v_new
        if delta is not None:                             # the level above: plain SGD on the raw values
            raw = [r - kappa * d for r, d in zip(raw, delta)]
        yield [x.clone() for x in xs], {"lr": raw[0], "beta1": _sig(raw[1]), "beta2": _sig(raw[2])}


def oracle_rmsprop(lr, alpha, eps, kappa, steps, stale=False):
    """hf.RMSprop(lr, alpha, eps, hyper=hf.SGD(lr=kappa), one_pass=True). Yields (params, {lr, alpha})."""
    xs = _init()
    s = [torch.zeros_like(x) for x in xs]
    recs = [None] * len(xs)
    raw = [math.sqrt(lr), _unsig(alpha)]
    for step in range(steps):
        grads = _grads(step)
        jraw = (lambda rec: dict(rec, raw=raw)) if stale else (lambda rec: rec)
        delta = _hypergrad(recs, grads, lambda rec: rmsprop_jac(jraw(rec), eps))
        for i, g in enumerate(grads):
            x_new, s_new = rmsprop_update(xs[i], g, s[i], torch.tensor(raw, dtype=DT), eps)
            recs[i] = dict(s0=s[i], s=s_new, g=g, raw=list(raw))
            xs[i], s[i] = x_new, s_new
        if delta is not None:
            raw = [r - kappa * d for r, d in zip(raw, delta)]
        yield [x.clone() for x in xs], {"lr": raw[0] ** 2, "alpha": _sig(raw[1])}


def oracle_sgdm_adam(lr, momentum, alpha, betas, eps, steps, stale=False):
    """hf.SGD(lr, momentum, hyper=hf.Adam(lr=alpha, betas, eps), one_pass=True): level 0 learns (lr, momentum);
    the Adam level above steps on that 2-vector at every step, the first one included (with a zero
    hypergradient: its step count and v move)."""
    xs = _init()
    buf = [torch.zeros_like(x) for x in xs]
    recs = [None] * len(xs)
    h = torch.tensor([lr, momentum], dtype=DT)
    m1, v1, k = torch.zeros(2, dtype=DT), torch.full((2,), eps, dtype=DT), 0
    b1, b2 = betas
    for step in range(steps):
        grads = _grads(step)
        jraw = (lambda rec: dict(rec, raw=h.tolist())) if stale else (lambda rec: rec)
        delta = _hypergrad(recs, grads, lambda rec: sgdm_jac(jraw(rec)))
        d = torch.zeros(2, dtype=DT) if delta is None else torch.tensor(delta, dtype=DT)
        for i, g in enumerate(grads):
            x_new, b_new = sgdm_update(xs[i], g, buf[i], h)
            recs[i] = dict(b0=buf[i], b=b_new, raw=h.tolist())
            xs[i], buf[i] = x_new, b_new
        k += 1
        m1 = b1 * m1 + (1 - b1) * d
        v1 = b2 * v1 + (1 - b2) * d * d
        h = h - alpha * (m1 / (1 - b1 ** k)) / (torch.sqrt(v1 / (1 - b2 ** k)) + eps)
        yield [x.clone() for x in xs], {"lr": float(h[0]), "momentum": float(h[1])}


# ------------------------------------------------------------------------------------------------------------
# hyperfused, step by step, against the oracle
# ------------------------------------------------------------------------------------------------------------
def _rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _run_hf(make, no_grad=frozenset()):
    params = [torch.nn.Parameter(x) for x in _init()]
    opt = make(params)
    for step in range(STEPS):
        for p, g in zip(params, _grads(step, no_grad)):
            p.grad = None if g is None else g.clone()     # fresh tensors: the cpu backend may keep them
        opt.step()
        yield [p.detach().clone() for p in params], opt.hyperparameters()


def _compare(hf_run, oracle_run):
    n = 0
    for step, ((xs, hp), (oxs, ohp)) in enumerate(zip(hf_run, oracle_run)):
        for i, (x, ox) in enumerate(zip(xs, oxs)):
            assert _rel(x, ox) <= TOL, f"step {step}, tensor {i}: relative error {_rel(x, ox):.3g}"
        for name, val in ohp.items():
            assert hp[name] == pytest.approx(val, rel=TOL, abs=0), f"step {step}, {name}"
        n += 1
    assert n == STEPS


def _assert_moving(run, names):
    """The learned hyperparameters move by far more than the tolerance at every step from the third on, so acting
    one step late is visible. The first one-pass step has no previous update (no hypergradient); at the second,
    J of the first update is 0 for beta1 (mh_1 = g_1 whatever beta1) and for the momentum (the buffer was 0)."""
    hps = [hp for _, hp in run]
    for a, b in zip(hps[1:], hps[2:]):
        for name in names:
            assert abs(b[name] - a[name]) > 1e-6 * abs(a[name]), (name, a[name], b[name])


ADAM = dict(lr=0.02, betas=(0.8, 0.95), eps=1e-8, kappa=3e-4)
RMS = dict(lr=0.01, alpha=0.9, eps=1e-8, kappa=3e-4)
SGDM = dict(lr=0.05, momentum=0.8, alpha=1e-3, betas=(0.9, 0.999), eps=1e-8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adam_one_pass_matches_oracle(backend):
    c = ADAM
    make = lambda params: hf.Adam(params, lr=c["lr"], betas=c["betas"], eps=c["eps"], initial_exp_avg_sq=c["eps"],
                                  hyper=hf.SGD(lr=c["kappa"]), backend=backend, one_pass=True)
    _compare(_run_hf(make, NO_GRAD), oracle_adam(c["lr"], c["betas"], c["eps"], c["kappa"], STEPS))


@pytest.mark.parametrize("backend", BACKENDS)
def test_rmsprop_one_pass_matches_oracle(backend):
    c = RMS
    make = lambda params: hf.RMSprop(params, lr=c["lr"], alpha=c["alpha"], eps=c["eps"], eps_inside_sqrt=True,
                                     hyper=hf.SGD(lr=c["kappa"]), backend=backend, one_pass=True)
    _compare(_run_hf(make), oracle_rmsprop(c["lr"], c["alpha"], c["eps"], c["kappa"], STEPS))


@pytest.mark.parametrize("backend", BACKENDS)
def test_momentum_sgd_under_adam_one_pass_matches_oracle(backend):
    c = SGDM
    make = lambda params: hf.SGD(params, lr=c["lr"], momentum=c["momentum"],
                                 hyper=hf.Adam(lr=c["alpha"], betas=c["betas"], eps=c["eps"],
                                               initial_exp_avg_sq=c["eps"]),
                                 backend=backend, one_pass=True)
    _compare(_run_hf(make), oracle_sgdm_adam(c["lr"], c["momentum"], c["alpha"], c["betas"], c["eps"], STEPS))


ORACLES = {
    "adam": (lambda stale: oracle_adam(ADAM["lr"], ADAM["betas"], ADAM["eps"], ADAM["kappa"], STEPS, stale),
             ("lr", "beta1", "beta2")),
    "rmsprop": (lambda stale: oracle_rmsprop(RMS["lr"], RMS["alpha"], RMS["eps"], RMS["kappa"], STEPS, stale),
                ("lr", "alpha")),
    "sgd_m/adam": (lambda stale: oracle_sgdm_adam(SGDM["lr"], SGDM["momentum"], SGDM["alpha"], SGDM["betas"],
                                                  SGDM["eps"], STEPS, stale), ("lr", "momentum")),
}


@pytest.mark.parametrize("name", list(ORACLES))
def test_the_oracle_sees_stale_hyperparameters(name):
    """The configurations are sensitive enough: the hyperparameters move visibly at every step, and an oracle that
    evaluates the Jacobian with the current instead of the previous hyperparameters ends far outside TOL."""
    oracle, names = ORACLES[name]
    right = list(oracle(False))
    _assert_moving(right, names)
    wrong = list(oracle(True))
    err = max(_rel(x, y) for x, y in zip(wrong[-1][0], right[-1][0]))
    err_hp = max(abs(wrong[-1][1][n] / right[-1][1][n] - 1) for n in names)
    assert max(err, err_hp) > 1e3 * TOL, (err, err_hp)


def test_oracle_jacobians_match_autograd():
    """The hand-written Jacobians of the oracles against torch.func.jacfwd on their update functions, at a state
    a few steps in (so the bias corrections and the moments are not at their first-step values)."""
    eps = 1e-8
    gen = torch.Generator().manual_seed(3)
    x, m0, g = (torch.randn(6, generator=gen, dtype=DT) for _ in range(3))
    v0 = torch.rand(6, generator=gen, dtype=DT) + 0.1
    raw = torch.tensor([0.03, _unsig(0.8), _unsig(0.97)], dtype=DT)
    for t in (1, 2, 5):
        auto = torch.func.jacfwd(lambda r: adam_update(x, g, m0, v0, t, r, eps)[0])(raw)
        _, m, v = adam_update(x, g, m0, v0, t, raw, eps)
        hand = adam_jac(dict(m0=m0, v0=v0, m=m, v=v, g=g, t=t, raw=raw.tolist()), eps)
        torch.testing.assert_close(torch.stack(hand, 1), auto, rtol=1e-10, atol=1e-14)

    s0 = torch.rand(6, generator=gen, dtype=DT)
    raw = torch.tensor([0.1, _unsig(0.9)], dtype=DT)
    auto = torch.func.jacfwd(lambda r: rmsprop_update(x, g, s0, r, eps)[0])(raw)
    _, s = rmsprop_update(x, g, s0, raw, eps)
    hand = rmsprop_jac(dict(s0=s0, s=s, g=g, raw=raw.tolist()), eps)
    torch.testing.assert_close(torch.stack(hand, 1), auto, rtol=1e-10, atol=1e-14)

    raw = torch.tensor([0.05, 0.8], dtype=DT)
    auto = torch.func.jacfwd(lambda r: sgdm_update(x, g, m0, r)[0])(raw)
    _, b = sgdm_update(x, g, m0, raw)
    hand = sgdm_jac(dict(b0=m0, b=b, raw=raw.tolist()))
    torch.testing.assert_close(torch.stack(hand, 1), auto, rtol=1e-10, atol=1e-14)
