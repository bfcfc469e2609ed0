"""hf.AGD as a drop-in torch.optim optimizer: its skip contract, param groups, thread-count independence and
checkpoints (copy.deepcopy, pickle, state_dict, torch.distributed.checkpoint's state-dict helpers).

1. a gradient holding NaN or Inf skips the step bitwise (weights, u, v, eta) on every backend that runs on CPU
   tensors ("triton" under the interpreter), wherever the value sits in the kernels' loops, and is counted;
2. add_param_group checks before it inserts and updates L;
3. param_groups edits are honoured from the next step, or refused before anything changes;
4. spectral (and Frobenius) AGD give the same bits for one and two threads;
5. copies and checkpoints continue bitwise; a checkpoint that does not fit is refused and changes nothing;
6. get_optimizer_state_dict / set_optimizer_state_dict round-trip AGD.
"""
import copy
import math
import pickle
import re

import pytest
import torch
import torch.nn as nn

import hyperfused as hf
from hyperfused.ops import agd as agd_ops
from test_agd import cnn, data, fcn
from test_skip_contract import _device

NAN, INF = float("nan"), float("inf")
BACKENDS = ["reference", "cpu", "triton"]
NORMS = ["frobenius", "spectral"]




def _bits(t):
    return t.detach().reshape(-1).contiguous().view(torch.uint8)


def _assert_same(a, b, path="x"):
    """Bitwise equality of nested dicts / lists of tensors and plain values (NaN-safe, -0.0 != 0.0)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, path
        assert torch.equal(_bits(a), _bits(b)), f"{path} differs"
    elif isinstance(a, dict):
        assert set(a.keys()) == set(b.keys()), f"{path}: keys {list(a.keys())} != {list(b.keys())}"
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _position(params, key):
    return next((i for i, p in enumerate(params) if p is key), repr(key))


def _snapshot(opt, ids=True):
    """Everything an optimizer holds: its groups (tensor identities, when ``ids``, and every other entry),
    defaults (less the "differentiable": False that torch's __setstate__ adds), L, the weights and every state
    entry (keys, in order, and values), cloned."""
    params = [p for g in opt.param_groups for p in g["params"]]
    out = {"ids": [[id(p) for p in g["params"]] for g in opt.param_groups]} if ids else {}
    return {
        **out,
        "groups": [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups],
        "defaults": {k: v for k, v in opt.defaults.items() if k != "differentiable"},
        "L": opt.L,
        "weights": [p.detach().clone() for p in params],
        "state_keys": [_position(params, k) for k in opt.state],
        "state": [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opt.state[p].items()}
                  if p in opt.state else None for p in params],
    }


def _grads(params, t, scale=1.0):
    g = torch.Generator().manual_seed(100 + t)
    return [(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale).to(p.dtype).to(p.device)
            for p in params]


def _step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


# ------------------------------------------------------------------------------ 1. the skip contract
# A small matrix, and two tensors of more than 64 elements whose values reach the vectorised bodies of the CPU
# loops (16 lanes for a matrix, blocks of 16 * S for S = kh * kw slices) and their scalar tails: (70, 81) has
# rows of 81 = 5 * 16 + 1 elements and 5670 = 354 * 16 + 6 in all; (8, 21, 3, 3) has rows of 189 = 144 + 45
# and 1512 = 10 * 144 + 72 elements in all.
SKIP_SHAPES = [(6, 4), (70, 81), (8, 21, 3, 3)]
WHERE = {"small": (0, (1, 2)), "matrix-body": (1, (3, 5)), "matrix-tail": (1, (69, 80)),
         "conv-body": (2, (2, 3, 1, 1)), "conv-tail": (2, (7, 20, 2, 2))}


def _skip_params(dev, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [nn.Parameter((torch.randn(s, generator=g, dtype=torch.float64) / 3).to(dtype).to(dev))
            for s in SKIP_SHAPES]


def test_the_positions_reach_the_loops_bodies_and_tails():
    """The test's premise: 'body' positions lie inside a whole block of 16 lanes (16 * S elements for a kernel)
    of both the row loop (agd_gv) and the flat loop (agd_sumsq), 'tail' positions past the last whole block."""
    for name, (t, idx) in WHERE.items():
        shape = SKIP_SHAPES[t]
        S = 1 if len(shape) == 2 else shape[2] * shape[3]
        P = 16 * S
        flat = torch.arange(math.prod(shape)).reshape(shape)[idx].item()
        row_len = shape[1] * S
        in_row, n = flat % row_len, math.prod(shape)
        assert n > 64 or name == "small"
        if name.endswith("body"):
            assert in_row < (row_len // P) * P and flat < (n // P) * P, name
        elif name.endswith("tail"):
            assert in_row >= (row_len // P) * P and flat >= (n // P) * P, name


def _counter(opt):
    first = opt.param_groups[0]["params"][0]
    return opt.state[first]["skipped_steps"]


def _skip_cases():
    """Every position and value on the reference and cpu backends; the Triton kernels have no scalar tail (their
    tiles are masked), so under the slow interpreter NaN and Inf in the small tensor and in the two bodies."""
    for backend in BACKENDS:
        for norm in NORMS:
            for vname, value in (("nan", NAN), ("inf", INF), ("-inf", -INF)):
                for where in WHERE:
                    if backend == "triton" and (vname == "-inf" or where.endswith("tail")):
                        continue
                    yield pytest.param(backend, norm, value, where, id=f"{backend}-{norm}-{vname}-{where}")


@pytest.mark.parametrize("backend, norm, value, where", list(_skip_cases()))
def test_non_finite_gradient_skips_the_step_bitwise_and_counts_it(backend, norm, value, where):
    """Two identical optimizers take two steps; one then gets a gradient holding one non-finite value: its
    weights, u, v and eta stay bitwise as they were (equal to the twin's), the device counter says 1, and the next
    step (finite for both) leaves the two bitwise equal again."""
    dev = _device(backend)
    pa, pb = _skip_params(dev), _skip_params(dev)
    oa = hf.AGD(pa, norm=norm, backend=backend)
    ob = hf.AGD(pb, norm=norm, backend=backend)
    for t in (1, 2):
        _step(oa, pa, _grads(pa, t))
        _step(ob, pb, _grads(pb, t))
    before = _snapshot(oa)
    bad = _grads(pa, 3)
    t, idx = WHERE[where]
    bad[t][idx] = value
    _step(oa, pa, bad)
    assert oa.skipped_steps == 1 and isinstance(oa.skipped_steps, int)
    c = _counter(oa)
    assert c.dtype == torch.int64 and c.dim() == 0 and c.device == pa[0].device and int(c) == 1
    assert int(oa.state_dict()["state"][0]["skipped_steps"]) == 1      # it rides in the state dict
    c.zero_()                                          # everything else bitwise as before, and as the twin's
    _assert_same(_snapshot(oa), before)
    _assert_same(_snapshot(oa, ids=False), _snapshot(ob, ids=False))
    c.fill_(1)
    _step(oa, pa, _grads(pa, 3))
    _step(ob, pb, _grads(pb, 3))
    assert oa.skipped_steps == 1 and ob.skipped_steps == 0
    _counter(ob).fill_(1)
    _assert_same(_snapshot(oa, ids=False), _snapshot(ob, ids=False))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_skipped_first_step_leaves_the_fresh_state(backend, norm):
    """A NaN at the very first step: the optimizer is as constructed (its state exists from construction), and
    training goes on as if the step had not been taken."""
    dev = _device(backend)
    pa, pb = _skip_params(dev), _skip_params(dev)
    oa = hf.AGD(pa, norm=norm, backend=backend)
    ob = hf.AGD(pb, norm=norm, backend=backend)
    fresh = _snapshot(oa)
    bad = _grads(pa, 1)
    bad[1][3, 5] = NAN
    _step(oa, pa, bad)
    assert oa.skipped_steps == 1
    _counter(oa).zero_()
    _assert_same(_snapshot(oa), fresh)
    for t in (2, 3):
        _step(oa, pa, _grads(pa, t))
        _step(ob, pb, _grads(pb, t))
    _assert_same(_snapshot(oa, ids=False), _snapshot(ob, ids=False))


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_compiled_step_decides_the_skip_without_reading_the_device(backend, norm, monkeypatch):
    """On the compiled backends the skip is a device-side flag: step() (Frobenius, and spectral with
    max_iter=1, whose convergence check needs no read) converts no tensor to a Python value, with a finite
    gradient or with a NaN."""
    dev = _device(backend)
    params = _skip_params(dev)
    opt = hf.AGD(params, norm=norm, backend=backend, max_iter=1)
    _step(opt, params, _grads(params, 1))
    reads = []

    def refuse(name):
        def f(self, *a, **k):
            reads.append(name)
            raise AssertionError(f"step() read a tensor on the host ({name})")
        return f
    bad = _grads(params, 2)
    bad[2][2, 3, 1, 1] = NAN
    for grads in (_grads(params, 3), bad):
        for p, g in zip(params, grads):
            p.grad = g
        with monkeypatch.context() as m:
            for name in ("__bool__", "item", "tolist", "__float__", "__int__", "__index__"):
                m.setattr(torch.Tensor, name, refuse(name))
            opt.step()
    assert not reads
    assert opt.skipped_steps == 1


# ------------------------------------------------------------------------------ 2. add_param_group
def _mats(shapes, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype) / 3) for s in shapes]


def _authors_step(params, gains, L):
    """The authors' Frobenius step (tests/test_agd.py), with a gain per tensor and L given."""
    G = 0.0
    for p in params:
        G += agd_ops.scale_of(p) * float(sum(n for n in agd_ops.as_slices(p.grad).flatten(1).norm(dim=1)))
    eta = math.log(0.5 * (1 + math.sqrt(1 + 4 * G / L)))
    for p, gain in zip(params, gains):
        n = agd_ops.as_slices(p.grad).flatten(1).norm(dim=1)
        c = gain * eta / L * agd_ops.scale_of(p) / n
        p.data -= (c.reshape(1, 1, *p.shape[2:]) if p.dim() == 4 else c) * p.grad
    return eta


@pytest.mark.parametrize("norm", NORMS)
def test_refused_add_param_group_changes_nothing_and_a_retry_succeeds(norm):
    w1, w2, w3, w4 = _mats([(6, 4), (5, 6), (3, 5), (3, 5, 2, 2)])
    bias = nn.Parameter(torch.zeros(5, dtype=torch.float64))
    opt = hf.AGD([w1, w2], norm=norm)
    _step(opt, [w1, w2], _grads([w1, w2], 1))
    before = _snapshot(opt)
    refusals = [
        ({"params": [bias]}, ValueError,
         re.escape("matrices and 4-D convolution kernels; got a parameter of shape (5,)")),
        ({"params": [w3, bias]}, ValueError, "got a parameter of shape"),            # not half-added
        ({"params": [w3], "gain": -1.0}, ValueError, "gain must be a finite number >= 0, got -1.0"),
        ({"params": [w3], "gain": NAN}, ValueError, "gain must be"),
        ({"params": [w3], "lr": 0.1}, ValueError, "param group 1 holds 'lr', which AGD does not use"),
        ({"params": [w3], "norm": "spectral"}, ValueError, "holds 'norm'"),
        ({"params": [w3, w1]}, ValueError, "more than one parameter group"),         # torch's own check
        ({"params": [torch.zeros(3, 5, dtype=torch.complex64, requires_grad=True)]}, TypeError, "real floating"),
    ]
    for group, exc, match in refusals:
        with pytest.raises(exc, match=match):
            opt.add_param_group(group)
        _assert_same(_snapshot(opt), before)
    opt.add_param_group({"params": [w3], "gain": 0.5})
    opt.add_param_group({"params": w4, "gain": 2.0})
    assert opt.L == 4 and len(opt.param_groups) == 3
    if norm == "spectral":
        assert opt.state[w3]["u"].shape == (1, 3) and opt.state[w4]["v"].shape == (4, 5)


def test_an_added_group_counts_in_L_and_steps_with_its_gain():
    """Added after a first step, a group of two tensors (a matrix, a kernel) with its own gain: the next step
    is the authors' with L = 4 and per-group gains (before, L stayed at the constructor's count)."""
    ws = _mats([(6, 4), (5, 6), (3, 5), (3, 5, 2, 2)])
    ref = [nn.Parameter(w.detach().clone()) for w in ws]
    opt = hf.AGD(ws[:2], backend="reference")
    _step(opt, ws[:2], _grads(ws[:2], 1))
    for p, g in zip(ref[:2], _grads(ref[:2], 1)):
        p.grad = g
    with torch.no_grad():
        _authors_step(ref[:2], [1.0, 1.0], 2)
    opt.add_param_group({"params": ws[2:], "gain": 0.5})
    assert opt.L == 4
    grads = _grads(ws, 2)
    _step(opt, ws, grads)
    for p, g in zip(ref, grads):
        p.grad = g.clone()
    with torch.no_grad():
        eta = _authors_step(ref, [1.0, 1.0, 0.5, 0.5], 4)
    assert float(opt.eta) == pytest.approx(eta, rel=1e-12)
    for a, b in zip(ws, ref):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_group_added_later_steps_as_if_given_at_construction(backend, norm):
    dev = _device(backend)
    a, b = _skip_params(dev), _skip_params(dev)
    late = hf.AGD(a[:1], norm=norm, backend=backend)
    late.add_param_group({"params": a[1:], "gain": 0.5})
    early = hf.AGD([{"params": b[:1]}, {"params": b[1:], "gain": 0.5}], norm=norm, backend=backend)
    for t in (1, 2, 3):
        _step(late, a, _grads(a, t))
        _step(early, b, _grads(b, t))
    _assert_same(_snapshot(late, ids=False), _snapshot(early, ids=False))


# ------------------------------------------------------------------------------ 3. param_groups edits
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_gain_edit_is_honoured_from_the_next_step(backend, norm):
    """Two identical optimizers of two groups step once; then one's group 1 gain goes from 1 to 0.25: its next
    step moves group 1 by exactly a quarter of the twin's step (group 0 alike, eta the same)."""
    dev = _device(backend)
    pa, pb = _skip_params(dev, torch.float64), _skip_params(dev, torch.float64)
    oa = hf.AGD([{"params": pa[:1]}, {"params": pa[1:]}], norm=norm, backend=backend)
    ob = hf.AGD([{"params": pb[:1]}, {"params": pb[1:]}], norm=norm, backend=backend)
    _step(oa, pa, _grads(pa, 1))
    _step(ob, pb, _grads(pb, 1))
    oa.param_groups[1]["gain"] = 0.25
    w0 = [p.detach().clone() for p in pa]
    _step(oa, pa, _grads(pa, 2))
    _step(ob, pb, _grads(pb, 2))
    assert torch.equal(oa.eta, ob.eta)
    assert torch.equal(pa[0], pb[0])
    for p, q, w in zip(pa[1:], pb[1:], w0[1:]):
        torch.testing.assert_close(p.detach() - w, 0.25 * (q.detach() - w), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("edit, match", [
    (lambda g: g.__setitem__("lr", 0.1), "param group 0 holds 'lr', which AGD does not use"),
    (lambda g: g.__setitem__("max_iter", 5), "holds 'max_iter'"),
    (lambda g: g.__setitem__("gain", -1.0), "param group 0: gain must be a finite number >= 0, got -1.0"),
    (lambda g: g.__setitem__("gain", NAN), "gain must be"),
    (lambda g: g.__setitem__("gain", "2"), "gain must be"),
    (lambda g: g.__setitem__("gain", torch.tensor(2.0)), "gain must be"),
    (lambda g: g.pop("gain"), "gain must be a finite number >= 0, got None"),
    (lambda g: g["params"].append(nn.Parameter(torch.zeros(5, dtype=torch.float64))), "got a parameter of shape"),
], ids=["lr", "max_iter", "negative-gain", "nan-gain", "str-gain", "tensor-gain", "no-gain", "bias"])
@pytest.mark.parametrize("norm", NORMS)
def test_a_param_groups_edit_agd_cannot_honour_is_refused_and_changes_nothing(norm, edit, match):
    params = _skip_params("cpu", torch.float64)
    opt = hf.AGD(params, norm=norm, backend="cpu")
    _step(opt, params, _grads(params, 1))
    saved = copy.deepcopy(opt.param_groups[0])     # tensors deep-copied: keep the group's own list
    saved["params"] = list(opt.param_groups[0]["params"])
    edit(opt.param_groups[0])
    before = _snapshot(opt)
    for p, g in zip(params, _grads(params, 2)):
        p.grad = g
    with pytest.raises(ValueError, match=match):
        opt.step()
    _assert_same(_snapshot(opt), before)
    opt.param_groups[0] = saved                    # undone, the step goes through
    opt.step()
    assert opt.skipped_steps == 0 and float(opt.eta) > 0


def test_the_power_iteration_settings_are_checked_and_honoured():
    params = _skip_params("cpu", torch.float64)
    opt = hf.AGD(params, norm="spectral", backend="cpu", max_iter=1)
    for attr, value in (("tol", 0.0), ("tol", NAN), ("max_iter", 0), ("max_iter", 2.5), ("max_iter", True)):
        with pytest.raises(ValueError, match="tol must be > 0 and max_iter >= 1"):
            setattr(opt, attr, value)
    with pytest.raises(AttributeError, match="norm is fixed at construction"):
        opt.norm = "frobenius"
    assert opt.norm == "spectral" and opt.tol == 1e-4 and opt.max_iter == 1
    _step(opt, params, _grads(params, 1))
    assert opt.last_iterations == [1, 1, 1]
    opt.tol, opt.max_iter = 1e-300, 4               # settles never: every tensor runs to the new cap
    _step(opt, params, _grads(params, 2))
    assert opt.last_iterations == [4, 4, 4]


# ------------------------------------------------------------------------------ 4. threads
def _thread_run(backend, norm, threads, steps=3):
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    shapes = [(300, 200), (64, 64, 3, 3), (100, 3000)]     # single-slice tensors of 60000 and 300000 elements
    params = [nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    opt = hf.AGD(params, norm=norm, tol=1e-12, max_iter=4, backend=backend)
    for t in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
        opt.step()
    if norm == "spectral":
        assert opt.last_iterations == [4, 4, 4]             # the power iteration ran to max_iter
    return _snapshot(opt, ids=False)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_steps_are_bitwise_equal_for_one_and_two_threads(backend, norm):
    _device(backend)
    saved = torch.get_num_threads()
    try:
        one = _thread_run(backend, norm, 1)
        two = _thread_run(backend, norm, 2)
    finally:
        torch.set_num_threads(saved)
    _assert_same(one, two)


def test_fixed_sum_is_a_sum():
    g = torch.Generator().manual_seed(0)
    for n in (0, 1, 2, 3, 7, 64, 1001):
        x = torch.randn(3, n, 5, generator=g, dtype=torch.float64)
        torch.testing.assert_close(agd_ops.fixed_sum(x, 1), x.sum(1), rtol=1e-13, atol=1e-13)
    x = torch.randn(70000, generator=g, dtype=torch.float64)
    torch.testing.assert_close(agd_ops.fixed_sum(x, 0), x.sum(), rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------ 5. copies and checkpoints
def _setup(backend, norm, dtype=torch.float32, steps=2):
    dev = _device(backend)
    model = cnn(dtype=dtype).to(dev)
    opt = hf.AGD(model.parameters(), norm=norm, backend=backend)
    batches = [(x.to(dev), y.to(dev)) for x, y in data(5, dtype=dtype)]
    _train(model, opt, batches[:steps])
    return model, opt, batches


def _continue(model, opt, batches):
    """Two steps, a skipped one (NaN in a gradient), one more."""
    _train(model, opt, batches[:2])
    opt.zero_grad()
    nn.functional.cross_entropy(model(batches[2][0]), batches[2][1]).backward()
    next(model.parameters()).grad[0, 0, 1, 1] = NAN
    opt.step()
    _train(model, opt, batches[3:4])


def _copy(how, model, opt, backend, norm):
    if how == "deepcopy":
        return copy.deepcopy((model, opt))
    if how == "pickle":
        return pickle.loads(pickle.dumps((model, opt)))
    m2 = copy.deepcopy(model)
    o2 = hf.AGD(m2.parameters(), norm=norm, backend=backend)
    o2.load_state_dict(opt.state_dict())
    return m2, o2


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "state_dict"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_training_continued_from_a_copy_is_bitwise_equal(backend, norm, how):
    """float32 weights (torch's load casts float state to the weights' dtype: AGD keeps u, v float64)."""
    model, opt, batches = _setup(backend, norm)
    m2, o2 = _copy(how, model, opt, backend, norm)
    _assert_same(_snapshot(o2)["state"], _snapshot(opt)["state"])
    _continue(model, opt, batches[2:] + batches[:2])
    _continue(m2, o2, batches[2:] + batches[:2])
    assert opt.skipped_steps == o2.skipped_steps == 1
    _assert_same(_snapshot(opt, ids=False), _snapshot(o2, ids=False))
    assert o2.norm == norm and o2.backend == backend and o2.max_iter == opt.max_iter and o2.tol == opt.tol


def test_a_loaded_state_is_a_copy():
    model, opt, batches = _setup("cpu", "spectral", dtype=torch.float64)     # torch's cast would copy float32
    sd = opt.state_dict()
    kept = copy.deepcopy(sd)
    m2 = copy.deepcopy(model)
    o2 = hf.AGD(m2.parameters(), norm="spectral", backend="cpu")
    o2.load_state_dict(sd)
    _continue(m2, o2, batches[2:] + batches[:2])   # a skipped step among them: the counter moves
    assert o2.skipped_steps == 1
    _assert_same(opt.state_dict(), kept)        # the original's state did not move with the copy's
    assert all(o2.state[p]["u"].dtype == torch.float64 for p in m2.parameters())


def _checkpoint(norm, make=cnn, groups=1, steps=1, dtype=torch.float32, seed=0):
    model = make(dtype=dtype, seed=seed)
    ps = list(model.parameters())
    opt = hf.AGD(ps if groups == 1 else [{"params": ps[:1]}, {"params": ps[1:]}], norm=norm, backend="cpu")
    _train(model, opt, data(steps, dtype=dtype))
    return opt.state_dict()


def _edited(norm, edit):
    sd = copy.deepcopy(_checkpoint(norm))
    edit(sd)
    return sd


def _foreign(kind):
    model = cnn(dtype=torch.float32)
    if kind == "hf.SGD":
        opt = hf.SGD(model.parameters(), lr=0.1, hyper=hf.SGD(lr=1e-4))
    else:
        opt = getattr(torch.optim, kind)(model.parameters(), lr=0.1, **({"momentum": 0.9} if kind == "SGD" else {}))
    _train(model, opt, data(1, dtype=torch.float32))
    return opt.state_dict()


REFUSED = {
    "not-a-state-dict": ("spectral", lambda: {"weights": []}, "expected an optimizer state_dict"),
    "fewer-params": ("spectral", lambda: _checkpoint("spectral", make=lambda dtype, seed: fcn(depth=2, dtype=dtype)),
                     "param group 0 holds 2 parameters in the checkpoint and 3 in this optimizer"),
    "more-groups": ("spectral", lambda: _checkpoint("spectral", groups=2),
                    "the checkpoint has 2 param groups and this optimizer 1"),
    "shape": ("spectral", lambda: _edited("spectral", lambda sd: sd["state"][2].update(
                  u=torch.ones(1, 7, dtype=torch.float64), v=torch.ones(1, 128, dtype=torch.float64))),
              re.escape("parameter 2 has u of shape (1, 7), but this optimizer's parameter 2 has shape (5, 128) and "
                        "needs (1, 5)")),
    "u-dtype": ("spectral", lambda: _edited("spectral", lambda sd: sd["state"][1].update(
                    u=sd["state"][1]["u"].float())),
                "parameter 1 has u of dtype torch.float32; AGD keeps its power-iteration vectors in torch.float64"),
    "nan-v": ("spectral", lambda: _edited("spectral", lambda sd: sd["state"][0]["v"].view(-1)[3].fill_(NAN)),
              "parameter 0 holds a non-finite v"),
    "only-u": ("spectral", lambda: _edited("spectral", lambda sd: sd["state"][1].pop("v")), "only one of"),
    "nan-eta": ("frobenius", lambda: _edited("frobenius", lambda sd: sd["state"][0]["eta"].fill_(NAN)),
                "eta must be finite and >= 0, got nan"),
    "counter-dtype": ("frobenius", lambda: _edited("frobenius", lambda sd: sd["state"][0].update(
                          skipped_steps=sd["state"][0]["skipped_steps"].double())),
                      "skipped_steps must be a 0-dim torch.int64 tensor, got torch.float64"),
    "negative-counter": ("frobenius", lambda: _edited("frobenius",
                                                      lambda sd: sd["state"][0]["skipped_steps"].fill_(-1)),
                         "skipped_steps must be finite and >= 0, got -1"),
    "bad-gain": ("frobenius", lambda: _edited("frobenius", lambda sd: sd["param_groups"][0].update(gain=-2.0)),
                 "param group 0 of the checkpoint: gain must be a finite number >= 0, got -2.0"),
    "torch-SGD": ("frobenius", lambda: _foreign("SGD"),
                  "param group 0 of the checkpoint holds lr, momentum, .*: the checkpoint was written by another "
                  "optimizer"),
    "torch-Adam": ("spectral", lambda: _foreign("Adam"), "holds lr, betas, eps, .*written by another optimizer"),
    "hf.SGD": ("frobenius", lambda: _foreign("hf.SGD"), "holds lr, .*written by another optimizer"),
    "foreign-state": ("frobenius", lambda: _edited("frobenius", lambda sd: sd["state"][1].update(
                          exp_avg=torch.zeros(8, 8, 3, 3))),
                      "the state of parameter 1 holds exp_avg, which AGD does not keep: the checkpoint was written "
                      "by another optimizer"),
    "foreign-key": ("frobenius", lambda: _edited("frobenius", lambda sd: sd["state"].update(hyperfused={})),
                    "an entry 'hyperfused' that belongs to none of its parameters"),
    "spectral-into-frobenius": ("frobenius", lambda: _checkpoint("spectral"),
                                "written by a spectral AGD, and this optimizer has norm='frobenius'"),
    "frobenius-into-spectral": ("spectral", lambda: _checkpoint("frobenius"),
                                "written by a Frobenius AGD, and this optimizer has norm='spectral'"),
    "counter-elsewhere": ("frobenius", lambda: _edited("frobenius", lambda sd: sd["state"][2].update(
                              skipped_steps=sd["state"][0].pop("skipped_steps"))),
                          "parameter 2 holds skipped_steps, which AGD keeps with its first parameter"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_checkpoint_that_does_not_fit_is_refused_and_changes_nothing(case):
    norm, make, match = REFUSED[case]
    model = cnn(dtype=torch.float32, seed=3)
    opt = hf.AGD(model.parameters(), norm=norm, backend="cpu")
    _train(model, opt, data(2, dtype=torch.float32, seed=4))
    good = copy.deepcopy(opt.state_dict())
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(make())
    _assert_same(_snapshot(opt), before)
    opt.load_state_dict(good)                    # a checkpoint that fits still loads
    _assert_same(_snapshot(opt), before)


def test_load_state_dict_hooks_see_the_checked_dict_and_the_loaded_state():
    """A pre-hook's result is what is checked (here it repairs float32 vectors); post-hooks see the state as
    loaded (u, v float64, the counter with the first parameter)."""
    model, opt, _ = _setup("cpu", "spectral")
    bad = copy.deepcopy(opt.state_dict())
    for st in bad["state"].values():
        st["u"], st["v"] = st["u"].float(), st["v"].float()
    o2 = hf.AGD(copy.deepcopy(model).parameters(), norm="spectral", backend="cpu")
    seen = []

    def repair(optimizer, sd):
        sd["state"] = {k: {n: t.double() if n in ("u", "v") else t for n, t in st.items()}
                       for k, st in sd["state"].items()}

    o2.register_load_state_dict_pre_hook(repair)
    o2.register_load_state_dict_post_hook(lambda optimizer: seen.append(
        [(st["u"].dtype, "skipped_steps" in st) for st in optimizer.state.values()]))
    o2.load_state_dict(bad)
    assert seen == [[(torch.float64, True), (torch.float64, False), (torch.float64, False)]]


# ------------------------------------------------------------------------------ 6. torch.distributed.checkpoint
@pytest.mark.parametrize("fresh", [False, True], ids=["trained", "never-stepped"])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_distributed_checkpoint_state_dict_helpers_round_trip(backend, norm, fresh):
    """get_optimizer_state_dict / set_optimizer_state_dict with a plain model: keyed by parameter names, every
    parameter present (DSD refuses a checkpoint without a parameter's state), training continues bitwise."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    model, opt, batches = _setup(backend, norm, steps=0 if fresh else 2)
    osd = get_optimizer_state_dict(model, opt)
    assert set(osd["state"]) == {n for n, _ in model.named_parameters()}
    first = next(n for n, _ in model.named_parameters())
    assert osd["state"][first]["skipped_steps"].dtype == torch.int64
    m2 = copy.deepcopy(model)
    o2 = hf.AGD(m2.parameters(), norm=norm, backend=backend)
    set_optimizer_state_dict(m2, o2, osd)
    _continue(model, opt, batches[2:] + batches[:2])
    _continue(m2, o2, batches[2:] + batches[:2])
    _assert_same(_snapshot(opt, ids=False), _snapshot(o2, ids=False))
