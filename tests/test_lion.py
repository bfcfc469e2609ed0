"""hf.Lion: at height 0 the algorithm of its paper (an independent for-loop written here is the oracle, torch has
no Lion); with a level above, the learned lr against autograd on the last update; every backend against the
reference (the shared matrix of tests/optim_infos.py covers Lion at level 0 of every tower; here Lion also stands
above level 0); the skip contract; what it refuses."""
import pytest
import torch

import hyperfused as hf
from hyperfused import ops  # noqa: F401
from optim_infos import backends as _backends

STEPS = 50
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}
SHAPES = [(1,), (7,), (13, 11), (4097,)]




def _lion_loop(ps, grads, lr, betas, wd, maximize):
    """The paper's Lion (Chen et al. 2023, Algorithm 2), one tensor at a time."""
    b1, b2 = betas
    ms = [torch.zeros_like(p) for p in ps]
    for step in grads:
        for p, g, m in zip(ps, step, ms):
            g = -g if maximize else g
            p.mul_(1 - lr * wd)
            p.add_(torch.sign(m * b1 + g * (1 - b1)), alpha=-lr)
            m.mul_(b2).add_(g, alpha=1 - b2)
    return ps


def _data(dtype, steps, scale=1.0):
    g = torch.Generator().manual_seed(5)
    params = [torch.randn(*s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]
    grads = [[(torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dtype) for s in SHAPES]
             for _ in range(steps)]
    return params, grads


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kw", [{}, dict(lr=3e-3, betas=(0.8, 0.95), weight_decay=0.1, maximize=True)],
                         ids=["defaults", "wd-maximize"])
def test_height_0_is_the_papers_lion(kw, dtype, backend, one_pass):
    steps = STEPS if backend != "triton" or torch.cuda.is_available() else 8
    params, grads = _data(dtype, steps)
    full = dict(dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, maximize=False), **kw)
    want = _lion_loop([p.clone() for p in params], grads, full["lr"], full["betas"], full["weight_decay"],
                      full["maximize"])
    ps = [p.clone().requires_grad_(True) for p in params]
    opt = hf.Lion(ps, backend=backend, one_pass=one_pass, **kw)
    for step in grads:
        for p, g in zip(ps, step):
            p.grad = g.clone()
        opt.step()
    moved = max(float((w.double() - p.double()).abs().max()) for w, p in zip(want, params))
    assert moved > 0
    for w, p in zip(want, ps):
        torch.testing.assert_close(p.detach(), w, rtol=TOL[dtype], atol=TOL[dtype] * moved)
    assert set(opt.state[ps[0]]) == {"exp_avg", "moved"}          # no Jacobian state when nothing is learned


def _loss_grads(xs, t):
    g = torch.Generator().manual_seed(900 + t)
    return [(x - torch.randn(x.shape, generator=g, dtype=x.dtype)) * (1.0 + i) for i, x in enumerate(xs)]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_learned_lr_matches_autograd_on_the_last_update(wd, backend):
    """delta = sum g_t . d x_t / d lr through autograd on Lion's update (decay included), SGD(kappa) on the lr."""
    kappa, lr0, betas, steps = 1e-4, 1e-2, (0.9, 0.99), 8
    g0 = torch.Generator().manual_seed(2)
    x0 = [torch.randn(6, 5, generator=g0, dtype=torch.float64), torch.randn(9, generator=g0, dtype=torch.float64)]

    def update(x, g, m, lr):
        c = betas[0] * m + (1 - betas[0]) * g
        return x * (1 - lr * wd) - lr * torch.sign(c), betas[1] * m + (1 - betas[1]) * g

    xs, ms, last = [x.clone() for x in x0], [torch.zeros_like(x) for x in x0], None
    lr = torch.tensor(lr0, dtype=torch.float64)
    for t in range(steps):
        gs = _loss_grads(xs, t)
        if last is not None:
            r = last[3].clone().requires_grad_(True)
            delta = sum(torch.autograd.grad((g * update(xp, gp, mp, r)[0]).sum(), r)[0]
                        for xp, gp, mp, g in zip(last[0], last[1], last[2], gs))
            lr = lr - kappa * delta
        new = [update(x, g, m, lr) for x, g, m in zip(xs, gs, ms)]
        last = (xs, gs, ms, lr.detach().clone())
        xs, ms = [n[0].detach() for n in new], [n[1] for n in new]

    ps = [x.clone().requires_grad_(True) for x in x0]
    opt = hf.Lion(ps, lr=lr0, betas=betas, weight_decay=wd, hyper=hf.SGD(lr=kappa), backend=backend)
    for t in range(steps):
        for p, g in zip(ps, _loss_grads([p.detach() for p in ps], t)):
            p.grad = g
        opt.step()
    got = opt.hyperparameters()["lr"]
    assert abs(got - lr0) > 1e-6, "the lr did not move: the case tests nothing"
    assert abs(got - float(lr)) <= 1e-12 * abs(float(lr)), (got, float(lr))
    for p, x in zip(ps, xs):
        torch.testing.assert_close(p.detach(), x, rtol=1e-12, atol=1e-12)
    assert set(opt.state[ps[0]]) == {"exp_avg", "prev_sign", "moved"}


def _model(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.5).to(dtype)) for s in [(7,), (13, 11), (300,)]]


def _train(make, dtype, steps=5, nan_at=None):
    ps = _model(dtype)
    opt = make(ps)
    for t in range(steps):
        g = torch.Generator().manual_seed(40 + t)
        for p in ps:
            p.grad = (torch.randn(p.shape, generator=g) + 0.3 * p.detach().float()).to(dtype)
        if t == nan_at:
            ps[1].grad[3, 4] = float("nan")
        opt.step()
    return ps, opt


@pytest.mark.parametrize("backend", [b for b in _backends() if b != "reference"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("below", ["sgd-momentum", "adam"])
def test_lion_above_level_0_matches_the_reference(below, backend, one_pass):
    # (Adam below learns its betas, whose Jacobians at the first step are exact zeros on every backend: a sign()
    # above would turn any round-off left there into full steps)
    def make(b):
        lion = hf.Lion(lr=1e-5, per_tensor=True, hyper=hf.SGD(lr=1e-9))
        if below == "adam":
            return lambda ps: hf.Adam(ps, lr=1e-2, backend=b, one_pass=one_pass, hyper=lion)
        return lambda ps: hf.SGD(ps, lr=1e-2, momentum=0.9, backend=b, one_pass=one_pass, hyper=lion)
    p_ref, o_ref = _train(make("reference"), torch.float64)
    p_b, o_b = _train(make(backend), torch.float64)
    for a, b in zip(p_b, p_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for la, lb in zip(o_b.levels, o_ref.levels):
        for name, v in lb.hyperparameters().items():
            torch.testing.assert_close(torch.tensor(la.hyperparameters()[name]), torch.tensor(v), rtol=1e-12, atol=0)
    assert all(v != 1e-5 for v in o_ref.levels[1].hyperparameters()["lr"]), "Lion's lrs did not move"


@pytest.mark.parametrize("backend", _backends())
def test_a_non_finite_gradient_skips_the_whole_step(backend):
    make = lambda ps: hf.Lion(ps, lr=1e-3, weight_decay=0.1, backend=backend, hyper=hf.SGD(lr=1e-5))  # noqa: E731
    ref, o_ref = _train(make, torch.float32, steps=3)
    got, opt = _train(make, torch.float32, steps=4, nan_at=3)
    assert opt.skipped_steps == 1
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


def test_lion_refuses_to_learn_its_betas():
    with pytest.raises(ValueError, match="'beta1' cannot be learned"):
        hf.Lion([torch.nn.Parameter(torch.zeros(3))], learn=("beta1",), hyper=hf.SGD(lr=1e-5))
    with pytest.raises(ValueError, match="beta2"):
        hf.Lion([torch.nn.Parameter(torch.zeros(3))], betas=(0.9, 1.5))
