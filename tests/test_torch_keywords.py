"""torch's keywords on every kind: ``weight_decay`` (L2), ``maximize``, AdamW's decoupled decay, and the keywords
that change nothing here (``foreach``, ``fused``, ``capturable``) or are refused (``amsgrad``, ``centered``, ...).

Height 0 against torch.optim is tests/test_torch_parity.py. Here the hypergradients: a tower's learned lr (and
betas) against a simulation written from the formulas with autograd, which differentiates the last update
(docs/MATH.md §4.6: previous weights, state and gradient detached, hyperparameters not), and every backend against
the reference with the options on.
"""
import copy

import pytest
import torch

import hyperfused as hf
from hyperfused import ops  # noqa: F401
from optim_infos import backends as _backends

KAPPA = 1e-3           # the level above: plain SGD on the raw lr




# ---------------------------------------------------------------------------------------------- the simulation
def _loss_grad(xs, step):
    """A fixed quadratic loss per tensor with a step-dependent target: its gradient at xs."""
    g = torch.Generator().manual_seed(500 + step)
    return [(x - torch.randn(x.shape, generator=g, dtype=x.dtype)) * (1.0 + 0.5 * i) for i, x in enumerate(xs)]


def _update(kind, x, g, st, lr, opts):
    """One step of ``kind`` on one tensor with torch's keyword options: (x', new state); differentiable in lr."""
    wd, maximize, dec = opts.get("weight_decay", 0.0), opts.get("maximize", False), kind == "adamw"
    if maximize:
        g = -g
    if wd and not dec:
        g = g + wd * x
    if kind in ("adam", "adamw"):
        b1, b2, eps = 0.9, 0.999, 1e-8
        t = st["t"] + 1
        m = b1 * st["m"] + (1 - b1) * g
        v = b2 * st["v"] + (1 - b2) * g * g
        u = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        x0 = x * (1 - lr * wd) if dec else x
        return x0 - lr * u, {"t": t, "m": m, "v": v}
    if kind == "sgd":                  # torch.optim.SGD with momentum 0.9 (BASE), dampening, Nesterov's
        buf = 0.9 * st["buf"] + (1 - opts.get("dampening", 0.0)) * g if st["t"] else g
        d = g + 0.9 * buf if opts.get("nesterov") else buf
        return x - lr * d, {"t": st["t"] + 1, "buf": buf}
    if kind == "rmsprop":
        s = 0.99 * st["s"] + 0.01 * g * g
        return x - lr * g / (s.sqrt() + 1e-8), {"t": st["t"] + 1, "s": s}
    if kind == "adagrad":
        s = st["s"] + g * g
        return x - lr * g / (s.sqrt() + 1e-10), {"t": st["t"] + 1, "s": s}
    raise ValueError(kind)


def _state0(kind, x):
    z = torch.zeros_like(x)
    return {"t": 0, "m": z, "v": z, "buf": z, "s": z}


def _value(kind, raw):
    """The lr from its raw form: RMSprop learns a with lr = a^2, the others the lr itself."""
    return raw * raw if kind == "rmsprop" else raw


def _simulate(kind, x0s, lr0, steps, opts, one_pass=False, edit=None):
    """The learned lr (one for the group) and the weights after ``steps`` steps of the tower kind / SGD(KAPPA):
    delta = sum over tensors of g~_t . d x_t / d raw lr, through autograd on the last update; one-pass mode
    updates with the lr it starts the step with and moves the lr after."""
    xs = [x.clone() for x in x0s]
    sts = [_state0(kind, x) for x in xs]
    raw = torch.tensor(lr0, dtype=torch.float64)
    raw = raw.sqrt() if kind == "rmsprop" else raw
    last = None                     # (x_{t-1}, raw g_{t-1}, state_{t-1}, raw lr used) of the last update
    for t in range(steps):
        gs = _loss_grad(xs, t)
        if opts.get("maximize"):
            gs = [-g for g in gs]   # what the optimizer is given: it ascends on them, i.e. descends the loss
        wd = opts.get("weight_decay", 0.0) if kind != "adamw" else 0.0
        geff = [(-g if opts.get("maximize") else g) + wd * x for g, x in zip(gs, xs)]
        delta = torch.zeros((), dtype=torch.float64)
        if last is not None:
            r = last[3].clone().requires_grad_(True)
            for xp, gp, sp, ge in zip(last[0], last[1], last[2], geff):
                xn, _ = _update(kind, xp, gp, sp, _value(kind, r), opts)
                delta = delta + torch.autograd.grad((ge * xn).sum(), r)[0]
        if not one_pass:
            raw = raw - KAPPA * delta
        step_raw = raw
        new_x, new_st = [], []
        for x, g, st in zip(xs, gs, sts):
            xn, stn = _update(kind, x, g, st, _value(kind, step_raw), opts)
            new_x.append(xn.detach())
            new_st.append({k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in stn.items()})
        last = (xs, gs, sts, step_raw.detach().clone())
        if one_pass:
            raw = raw - KAPPA * delta
        xs, sts = new_x, new_st
        if edit is not None and t == edit[0]:        # a scheduler sets the lr: the learned lr restarts from it
            raw = torch.tensor(edit[1], dtype=torch.float64)
            raw = raw.sqrt() if kind == "rmsprop" else raw
    return float(_value(kind, raw)), xs


CLS = {"adam": hf.Adam, "adamw": hf.AdamW, "sgd": hf.SGD, "rmsprop": hf.RMSprop, "adagrad": hf.Adagrad}
BASE = {"adam": {}, "adamw": {}, "sgd": dict(momentum=0.9), "rmsprop": {}, "adagrad": {}}
LR0 = {"adam": 1e-2, "adamw": 1e-2, "sgd": 1e-2, "rmsprop": 1e-3, "adagrad": 1e-2}
OPTIONS = [
    ("adamw", dict(weight_decay=0.1)),
    ("adamw", dict(weight_decay=0.1, maximize=True)),
    ("adam", dict(weight_decay=0.1)),
    ("adam", dict(maximize=True)),
    ("sgd", dict(weight_decay=0.1, maximize=True)),
    ("sgd", dict(nesterov=True)),
    ("sgd", dict(nesterov=True, weight_decay=0.1)),
    ("sgd", dict(dampening=0.3)),
    ("sgd", dict(dampening=0.5, weight_decay=0.1, maximize=True)),
    ("rmsprop", dict(weight_decay=0.1)),
    ("adagrad", dict(weight_decay=0.1, maximize=True)),
]


def _hf_run(kind, x0s, steps, opts, backend, one_pass, **extra):
    ps = [x.clone().requires_grad_(True) for x in x0s]
    kw = dict(BASE[kind], **opts, **extra)
    if kind == "rmsprop":
        kw.setdefault("learn", ("lr",))
    opt = CLS[kind](ps, lr=LR0[kind], hyper=hf.SGD(lr=KAPPA), backend=backend, one_pass=one_pass, learn=("lr",),
                    **{k: v for k, v in kw.items() if k != "learn"})
    for t in range(steps):
        grads = _loss_grad([p.detach() for p in ps], t)
        if opts.get("maximize"):
            grads = [-g for g in grads]      # maximize ascends on what it is given: here it descends the loss
        for p, g in zip(ps, grads):
            p.grad = g
        opt.step()
    return opt, [p.detach() for p in ps]


def _x0():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(9, generator=g, dtype=torch.float64)]


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("case", OPTIONS, ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items())}" for k, o in OPTIONS])
def test_learned_lr_matches_autograd_simulation(case, one_pass):
    kind, opts = case
    steps = 8
    x0 = _x0()
    want_lr, want_x = _simulate(kind, x0, LR0[kind], steps, opts, one_pass)
    opt, got_x = _hf_run(kind, x0, steps, opts, "reference", one_pass)
    got_lr = opt.hyperparameters()["lr"]
    assert abs(got_lr - want_lr) <= 1e-12 * max(1.0, abs(want_lr)), (got_lr, want_lr)
    assert abs(got_lr - LR0[kind]) > 1e-9, "the lr did not move: the case tests nothing"
    for a, b in zip(got_x, want_x):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


# ---------------------------------------------------------------------------------------------- every backend
def _run_backend(make, dtype, steps=5, scaler=None):
    g = torch.Generator().manual_seed(11)
    ps = [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.5).to(dtype)) for s in [(7,), (13, 11), (3, 1, 5, 5)]]
    opt = make(ps)
    for t in range(steps):
        gg = torch.Generator().manual_seed(100 + t)
        grads = [(torch.randn(p.shape, generator=gg) + 0.3 * p.detach().float()).to(dtype) for p in ps]
        if scaler is None:
            for p, gr in zip(ps, grads):
                p.grad = gr
            opt.step()
        else:
            loss = sum((p * gr).sum() for p, gr in zip(ps, grads))     # gradient gr, scaled by the scaler
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
    return ps, opt


TOWER_OPTIONS = [(k, o) for k, o in OPTIONS if not (k == "adam" and o == dict(maximize=True))] + [
    ("adamw", dict(weight_decay=0.1, per_tensor=True)),
    ("sgd", dict(weight_decay=0.05, maximize=True, per_tensor=True)),
]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _compare_backends(make, dtype, backend, **kw):
    p_ref, o_ref = _run_backend(lambda ps: make(ps, "reference"), dtype, **kw)
    p_b, o_b = _run_backend(lambda ps: make(ps, backend), dtype, **kw)
    for a, b in zip(p_b, p_ref):
        assert a.dtype == dtype
        err = float((a.double() - b.double()).norm() / b.double().norm())
        assert err <= TOL[dtype], err
    for la, lb in zip(o_b.levels, o_ref.levels):
        for name, v in lb.hyperparameters().items():
            a, b = torch.tensor(la.hyperparameters()[name]), torch.tensor(v)
            assert torch.allclose(a, b, rtol=max(TOL[dtype], 1e-9), atol=0), (name, a, b)
    return o_b


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "reference"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("case", TOWER_OPTIONS, ids=[f"{k}-{'-'.join(f'{a}={b}' for a, b in o.items())}"
                                                     for k, o in TOWER_OPTIONS])
def test_backends_match_reference_with_options(case, one_pass, backend):
    kind, opts = case

    def make(ps, b):
        return CLS[kind](ps, lr=LR0[kind], hyper=hf.SGD(lr=KAPPA), backend=b, one_pass=one_pass,
                         **dict(BASE[kind], **opts))
    _compare_backends(make, torch.float64, backend)


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
def test_adamw_tower_in_reduced_precision(dtype, backend):
    def make(ps, b):
        # (an Adam level above would normalise near-zero float32 hypergradients into full steps: the backends'
        # different rounding then moves its lr by different amounts, so the tower here is SGD / SGD)
        return hf.AdamW(ps, lr=1e-2, weight_decay=0.1, maximize=True,
                        hyper=hf.SGD(lr=1e-6, hyper=hf.SGD(lr=1e-9)), backend=b)
    _compare_backends(make, dtype, backend)


@pytest.mark.parametrize("backend", _backends())
def test_maximize_under_grad_scaler_equals_unscaled(backend):
    """GradScaler's scale reaches the kernels as 1 / scale (triton) or is divided out first (cpu, reference);
    maximize's sign is folded into that factor where the kernels apply it."""
    def make(ps):
        return hf.AdamW(ps, lr=1e-2, maximize=True, weight_decay=0.0, hyper=hf.SGD(lr=KAPPA), backend=backend)
    p0, _ = _run_backend(make, torch.float32)
    p1, _ = _run_backend(make, torch.float32, scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    for a, b in zip(p1, p0):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------- the keywords
TORCH_CLS = {hf.SGD: torch.optim.SGD, hf.Adam: torch.optim.Adam, hf.AdamW: torch.optim.AdamW,
             hf.RMSprop: torch.optim.RMSprop, hf.Adagrad: torch.optim.Adagrad}


@pytest.mark.parametrize("cls", list(TORCH_CLS), ids=lambda c: c.__name__)
def test_every_torch_keyword_is_accepted_with_its_default(cls):
    """Every argument of the torch counterpart exists, positionally where torch has it, with torch's default."""
    import inspect
    ours = inspect.signature(cls.__init__).parameters
    theirs = inspect.signature(TORCH_CLS[cls].__init__).parameters
    for name, p in theirs.items():
        if name in ("self", "params"):
            continue
        assert name in ours, f"hf.{cls.__name__} lacks torch's {name!r}"
        if p.default is not inspect.Parameter.empty and not isinstance(p.default, torch.Tensor):
            assert ours[name].default == p.default, (name, ours[name].default, p.default)
    pos = [n for n, p in theirs.items() if p.kind == p.POSITIONAL_OR_KEYWORD and n not in ("self", "params")]
    assert [n for n, p in ours.items() if p.kind == p.POSITIONAL_OR_KEYWORD][2:2 + len(pos)] == pos


@pytest.mark.parametrize("kw", [dict(foreach=True), dict(foreach=False), dict(fused=True), dict(capturable=True)],
                         ids=lambda kw: next(iter(kw)) + "=" + str(next(iter(kw.values()))))
def test_keywords_without_effect_change_nothing(kw):
    base, _ = _run_backend(lambda ps: hf.AdamW(ps), torch.float64)
    got, opt = _run_backend(lambda ps: hf.AdamW(ps, **kw), torch.float64)
    for a, b in zip(got, base):
        assert torch.equal(a, b)
    assert opt.param_groups[0][next(iter(kw))] == next(iter(kw.values()))


REFUSED = [(hf.Adam, dict(amsgrad=True)), (hf.AdamW, dict(differentiable=True)), (hf.SGD, dict(differentiable=True)),
           (hf.RMSprop, dict(centered=True)), (hf.RMSprop, dict(momentum=0.9)), (hf.Adagrad, dict(lr_decay=0.1))]


@pytest.mark.parametrize("cls,kw", REFUSED, ids=[f"{c.__name__}-{'-'.join(k)}" for c, k in REFUSED])
def test_unimplemented_keywords_are_refused_with_a_sentence(cls, kw):
    key = next(k for k in kw if k != "momentum" or cls is hf.RMSprop)
    with pytest.raises(ValueError, match=f"{key}=.*not supported by hf.{cls.__name__}"):
        cls([torch.nn.Parameter(torch.zeros(3))], **kw)


@pytest.mark.parametrize("kw", [dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1),
                                dict(momentum=0.9, nesterov=1), dict(momentum=0.9, dampening=float("inf"))])
def test_sgd_refuses_what_torch_refuses(kw):
    """torch.optim.SGD's rule: Nesterov momentum needs momentum > 0 and dampening 0; and values must be sane."""
    key = "dampening" if "dampening" in kw and "nesterov" not in kw else "nesterov"
    with pytest.raises((ValueError, TypeError), match=key):
        hf.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, **kw)
    if kw.get("nesterov") is True:
        with pytest.raises(ValueError):
            torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, **kw)


@pytest.mark.parametrize("kw", [dict(weight_decay=-0.1), dict(weight_decay=float("nan")), dict(maximize=1),
                                dict(weight_decay="0.1"), dict(lr="0.1")])
def test_bad_values_are_refused(kw):
    with pytest.raises((ValueError, TypeError), match=next(iter(kw))):
        hf.Adam([torch.nn.Parameter(torch.zeros(3))], **kw)


def test_a_level_above_refuses_weight_decay_and_maximize():
    with pytest.raises(ValueError, match="level 0"):
        hf.SGD(lr=1e-3, weight_decay=0.1)
    with pytest.raises(ValueError, match="level 0"):
        hf.Adam(lr=1e-3, maximize=True)


def test_edited_weight_decay_and_maximize_are_used_from_the_next_step_as_torch_does():
    g = torch.Generator().manual_seed(0)
    x0 = [torch.randn(6, generator=g, dtype=torch.float64)]
    runs = []
    for cls in (hf.AdamW, torch.optim.AdamW):
        ps = [x.clone().requires_grad_(True) for x in x0]
        opt = cls(ps, lr=1e-2)
        for t in range(6):
            if t == 3:
                opt.param_groups[0]["weight_decay"] = 0.3
                opt.param_groups[0]["maximize"] = True
            ps[0].grad = torch.randn(6, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
            opt.step()
        runs.append(ps[0].detach())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-12, atol=1e-14)


def test_a_refused_edit_changes_nothing():
    ps = [torch.nn.Parameter(torch.randn(4))]
    opt = hf.Adam(ps, lr=1e-2, hyper=hf.SGD(lr=1e-4))
    ps[0].grad = torch.randn(4)
    opt.step()
    before = (ps[0].detach().clone(), copy.deepcopy(opt.state_dict()))
    opt.param_groups[0]["weight_decay"] = -1.0
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    assert torch.equal(ps[0].detach(), before[0])
    after = opt.state_dict()
    assert torch.equal(after["state"][0]["exp_avg"], before[1]["state"][0]["exp_avg"])


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "cpu"])
def test_decoupled_decay_term_under_grad_scaler(backend):
    """The dot product of AdamW's lr hypergradient is unscaled like the gradients (triton, cuda: the kernels unscale
    as they read; the dot product reads them scaled)."""
    def make(ps):
        return hf.AdamW(ps, lr=1e-2, weight_decay=0.1, hyper=hf.SGD(lr=KAPPA), backend=backend)
    p0, o0 = _run_backend(make, torch.float64)
    p1, o1 = _run_backend(make, torch.float64, scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    assert abs(o1.hyperparameters()["lr"] - o0.hyperparameters()["lr"]) <= 1e-12 * o0.hyperparameters()["lr"]
    for a, b in zip(p1, p0):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [hf.AdamW, hf.Lion])
def test_lr_times_weight_decay_of_one_keeps_training(cls):
    """At lr wd = 1 the decay's Jacobian term cannot be rebuilt (the update erased x): the hypergradient keeps the
    kind's own term, nothing becomes NaN, no step is skipped (torch's AdamW trains there too)."""
    ps = [torch.nn.Parameter(torch.randn(6, dtype=torch.float64))]
    opt = cls(ps, lr=0.5, weight_decay=2.0, hyper=hf.SGD(lr=1e-6), learn=("lr",))
    for t in range(4):
        ps[0].grad = torch.randn(6, dtype=torch.float64)
        opt.step()
    assert opt.skipped_steps == 0
    assert torch.isfinite(ps[0]).all() and opt.hyperparameters()["lr"] != 0.5


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("case", [("adamw", dict(weight_decay=0.1)), ("rmsprop", {})], ids=["adamw", "rmsprop"])
def test_an_lr_set_between_steps_restarts_the_learned_lr_and_the_jacobian_keeps_the_old_one(case, one_pass,
                                                                                               backend):
    """A scheduler's fill_ between steps: the learned lr restarts from the new value, and the next hypergradient
    rebuilds the last update's Jacobian with the lr that update used (AdamW's decay term and RMSprop's J_lr carry
    the lr), as the autograd simulation does."""
    kind, opts = case
    steps, edit = 7, (3, LR0[kind] * 0.5)
    x0 = _x0()
    want_lr, want_x = _simulate(kind, x0, LR0[kind], steps, opts, one_pass, edit=edit)
    ps = [x.clone().requires_grad_(True) for x in x0]
    opt = CLS[kind](ps, lr=LR0[kind], hyper=hf.SGD(lr=KAPPA), backend=backend, one_pass=one_pass, learn=("lr",),
                    **dict(BASE[kind], **opts))
    for t in range(steps):
        for p, g in zip(ps, _loss_grad([p.detach() for p in ps], t)):
            p.grad = g
        opt.step()
        if t == edit[0]:
            opt.param_groups[0]["lr"].fill_(edit[1])
    got_lr = opt.hyperparameters()["lr"]
    assert abs(got_lr - want_lr) <= 1e-12 * abs(want_lr), (got_lr, want_lr)
    for a, b in zip(ps, want_x):
        torch.testing.assert_close(a.detach(), b, rtol=1e-11, atol=1e-12)


def test_numpy_scalars_are_accepted_as_torch_accepts_them():
    import numpy as np
    ps = [torch.nn.Parameter(torch.ones(3))]
    opt = hf.AdamW(ps, lr=np.float64(1e-2), weight_decay=np.float32(0.1), maximize=np.True_)
    ps[0].grad = torch.ones(3)
    opt.step()
    assert torch.all(ps[0] > 1 - 1e-2)        # maximize: the step goes up the gradient (the decay pulls a little)


@pytest.mark.parametrize("key,value", [("nesterov", True), ("dampening", 0.2)])
def test_sgd_nesterov_and_dampening_are_fixed_once_the_optimizer_exists(key, value):
    """They decide the state's shape (a kept gradient, a step count): an edit in param_groups is refused with a
    sentence at the next step, and nothing changes."""
    p = torch.nn.Parameter(torch.ones(4))
    opt = hf.SGD([p], lr=0.1, momentum=0.9, hyper=hf.SGD(lr=1e-3))
    p.grad = torch.full((4,), 0.5)
    opt.step()
    before = (p.detach().clone(), copy.deepcopy(opt.state_dict()))
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=f"{key} cannot change once the optimizer exists"):
        opt.step()
    assert torch.equal(p.detach(), before[0])
    assert str(opt.state_dict()["state"]) == str(before[1]["state"])


# ---------------------------------------------------------------------------------------------- learned decay
def _decoupled_update(kind, x, g, st, lr, wd):
    """AdamW's or Lion's update with the decay's value a tensor (differentiable in lr and wd)."""
    if kind == "adamw":
        b1, b2, eps = 0.9, 0.999, 1e-8
        t = st["t"] + 1
        m = b1 * st["m"] + (1 - b1) * g
        v = b2 * st["v"] + (1 - b2) * g * g
        u = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        return x * (1 - lr * wd) - lr * u, {"t": t, "m": m, "v": v}
    b1, b2 = 0.9, 0.99                                       # Lion
    c = b1 * st["m"] + (1 - b1) * g
    return x * (1 - lr * wd) - lr * torch.sign(c), {"t": st["t"] + 1, "m": b2 * st["m"] + (1 - b2) * g, "v": st["v"]}


def _simulate_decay(kind, x0s, lr0, wd0, steps, learn, kappa, one_pass=False):
    """The tower kind / SGD(kappa) learning ``learn`` (lr and / or weight_decay, both raw = value) through autograd
    on the last update; the learned decay is projected onto >= 0 after each step."""
    xs = [x.clone() for x in x0s]
    sts = [{"t": 0, "m": torch.zeros_like(x), "v": torch.zeros_like(x)} for x in xs]
    raw = {"lr": torch.tensor(lr0, dtype=torch.float64), "weight_decay": torch.tensor(wd0, dtype=torch.float64)}
    last = None
    for t in range(steps):
        gs = _loss_grad(xs, t)
        delta = {n: torch.zeros((), dtype=torch.float64) for n in learn}
        if last is not None:
            r = {n: last[3][n].clone().requires_grad_(n in learn) for n in raw}
            for xp, gp, sp, ge in zip(last[0], last[1], last[2], gs):
                xn, _ = _decoupled_update(kind, xp, gp, sp, r["lr"], r["weight_decay"])
                got = torch.autograd.grad((ge * xn).sum(), [r[n] for n in learn])
                for n, d in zip(learn, got):
                    delta[n] = delta[n] + d
        if not one_pass:
            raw = {n: (raw[n] - kappa * delta[n]) if n in learn else raw[n] for n in raw}
            raw["weight_decay"] = raw["weight_decay"].clamp_min(0)
        used = {n: v.detach().clone() for n, v in raw.items()}
        new_x, new_st = [], []
        for x, g, st in zip(xs, gs, sts):
            xn, stn = _decoupled_update(kind, x, g, st, used["lr"], used["weight_decay"])
            new_x.append(xn.detach())
            new_st.append({k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in stn.items()})
        last = (xs, gs, sts, used)
        if one_pass:
            raw = {n: (raw[n] - kappa * delta[n]) if n in learn else raw[n] for n in raw}
            raw["weight_decay"] = raw["weight_decay"].clamp_min(0)
        xs, sts = new_x, new_st
    return {n: float(v) for n, v in raw.items()}, xs


DECAY_CASES = [("adamw", ("lr", "weight_decay"), 1e-2, 0.1, 1e-3), ("adamw", ("weight_decay",), 1e-2, 0.1, 1e-1),
               ("lion", ("lr", "weight_decay"), 1e-3, 0.1, 1e-5), ("lion", ("weight_decay",), 1e-3, 0.5, 1.0),
               ("adamw", ("weight_decay",), 1e-2, 0.0, 1e-1)]      # starting at 0, the projection at 0 acts


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("case", DECAY_CASES, ids=[f"{k}-{'-'.join(l)}-wd{w}" for k, l, _, w, _ in DECAY_CASES])
def test_learned_weight_decay_matches_autograd_simulation(case, one_pass, backend):
    """learn=(..., "weight_decay") on a decoupled decay: J_wd = -lr x of the last update, through autograd, the
    learned value kept >= 0; every backend (the tower runs in Python there)."""
    kind, learn, lr0, wd0, kappa = case
    steps = 8
    x0 = _x0()
    want, want_x = _simulate_decay(kind, x0, lr0, wd0, steps, learn, kappa, one_pass)
    ps = [x.clone().requires_grad_(True) for x in x0]
    cls = hf.AdamW if kind == "adamw" else hf.Lion
    opt = cls(ps, lr=lr0, weight_decay=wd0, hyper=hf.SGD(lr=kappa), learn=learn, backend=backend, one_pass=one_pass)
    for t in range(steps):
        for p, g in zip(ps, _loss_grad([p.detach() for p in ps], t)):
            p.grad = g
        opt.step()
    got = opt.hyperparameters()
    for n in ("lr", "weight_decay"):
        assert abs(got[n] - want[n]) <= 1e-11 * max(1.0, abs(want[n])), (n, got[n], want[n])
    assert abs(got["weight_decay"] - wd0) > 1e-9 or (wd0 == 0 and got["weight_decay"] == 0), "the decay did not move"
    for a, b in zip(ps, want_x):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "reference"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_learned_weight_decay_runs_the_levels_above_in_the_tower_ops(backend, one_pass, monkeypatch):
    """A learned decoupled decay is an entry of the vector the level above optimizes: the C++ / Triton tower
    (plan and commit) runs the levels above, not the Python tower, and gives the Python tower's values (a tower of
    two levels above, so that level 1's own hyperparameters move too)."""
    if backend == "cpu":
        from hyperfused.ops import tower
    else:
        from hyperfused.ops.triton import tower
    from hyperfused.ops import reference
    calls = []
    real = tower.plan
    monkeypatch.setattr(tower, "plan", lambda *a, **k: calls.append(1) or real(*a, **k))

    def run(b):
        ps = [x.clone().requires_grad_(True) for x in _x0()]
        opt = hf.AdamW(ps, lr=1e-2, weight_decay=0.1, learn=("lr", "weight_decay"), backend=b, one_pass=one_pass,
                       hyper=hf.SGD(lr=1e-3, momentum=0.5, hyper=hf.SGD(lr=1e-6)))
        for t in range(6):
            for p, g in zip(ps, _loss_grad([p.detach() for p in ps], t)):
                p.grad = g
            opt.step()
        return opt, ps

    python_tower = []
    real_py = reference.tower_plan
    monkeypatch.setattr(reference, "tower_plan", lambda *a, **k: python_tower.append(1) or real_py(*a, **k))
    mine, pm = run(backend)
    assert len(calls) == 6 and not python_tower
    want, pw = run("reference")
    for a, b in zip(mine.levels, want.levels):
        ha, hb = a.hyperparameters(), b.hyperparameters()
        for n in hb:
            assert abs(ha[n] - hb[n]) <= 1e-12 * max(1.0, abs(hb[n])), (n, ha[n], hb[n])
    assert abs(want.hyperparameters()["weight_decay"] - 0.1) > 1e-6 and want.levels[1].hyperparameters()["lr"] != 1e-3
    for a, b in zip(pm, pw):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


def test_weight_decay_is_learned_for_a_decoupled_decay_only():
    p = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match="decoupled decay only"):
        hf.Adam(p, weight_decay=0.1, hyper=hf.SGD(lr=1e-3), learn=("lr", "weight_decay"))
    with pytest.raises(ValueError, match="decoupled decay only"):
        hf.SGD(p, lr=0.1, weight_decay=0.1, hyper=hf.SGD(lr=1e-3), learn=("weight_decay",))
    opt = hf.Adam(p, weight_decay=0.1, decoupled_weight_decay=True, hyper=hf.SGD(lr=1e-3),
                  learn=("weight_decay", "lr"))
    assert opt.param_groups[0]["learn"] == ("lr", "weight_decay")
    assert hf.AdamW(p, hyper=hf.SGD(lr=1e-3), learn="weight_decay").param_groups[0]["learn"] == ("weight_decay",)


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "triton"])
def test_learned_weight_decay_resumes_bitwise_and_restarts_from_an_edit(backend):
    """The learned decay rides in the checkpoint (a resumed run continues bit for bit), and a value set in
    param_groups restarts it from there (as a learned lr restarts)."""
    def run(steps, resume_at=None, edit_at=None):
        ps = [x.clone().requires_grad_(True) for x in _x0()]
        make = lambda: hf.AdamW(ps, lr=1e-2, weight_decay=0.1, hyper=hf.SGD(lr=1e-2), learn=("lr", "weight_decay"),
                                backend=backend)
        opt = make()
        for t in range(steps):
            if t == resume_at:
                sd = copy.deepcopy(opt.state_dict())
                opt = make()
                opt.load_state_dict(sd)
            if t == edit_at:
                opt.param_groups[0]["weight_decay"] = 0.25
                edited = opt.hyperparameters()["weight_decay"]       # adopted (before the step moves it)
            for p, g in zip(ps, _loss_grad([p.detach() for p in ps], t)):
                p.grad = g
            opt.step()
        return opt, [p.detach().clone() for p in ps], (edited if edit_at is not None else None)

    a, pa, _ = run(6)
    b, pb, _ = run(6, resume_at=3)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert a.hyperparameters() == b.hyperparameters()
    assert a.hyperparameters()["weight_decay"] != 0.1
    _, _, edited = run(4, edit_at=2)
    assert edited == 0.25
