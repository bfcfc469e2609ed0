"""The "cpu" backend (C++ kernels) against the "reference" backend, in both modes, every dtype.

Every optimizer kind, every learned subset, per-tensor learning rates, towers of height 1 to 3, odd tensor
sizes (1, 7, 278011 elements), float64 to 1e-12 and reduced precision to per-dtype tolerances; plus the
deterministic reductions and the skipped-step contract on this backend.
"""
import contextlib
import copy
import math
import itertools

import pytest
import torch

import hyperfused as hf
from optim_infos import LEVEL0  # the shared test matrix (hyperfused.kinds)
from optim_infos import NESTEROV_DAMPENED_TOWERS, assert_tower_states_equal
from optim_infos import cases as _cases
from optim_infos import maker as _maker
from hyperfused import ops
from hyperfused.kinds import TABLE_COLS

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="the C++ extension is not built")

SIZES = [(1,), (7,), (13, 11), (278011,), (3, 1, 5, 5)]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


def _params(dtype, seed=0, sizes=SIZES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.5).to(dtype)) for s in sizes]


def _grads(params, step, scale=1.0):
    g = torch.Generator().manual_seed(1000 + step)
    # gradients depend on the weights, like a real loss would (so trajectories diverge if updates do)
    return [((torch.randn(p.shape, generator=g) + 0.3 * p.detach().float()) * scale).to(p.dtype) for p in params]


def _run(make, dtype, backend, steps=6, one_pass=False, sizes=SIZES):
    params = _params(dtype, sizes=sizes)
    opt = make(params, backend, one_pass)
    for t in range(steps):
        for p, g in zip(params, _grads(params, t)):
            p.grad = g
        opt.step()
    return params, opt


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _compare(make, dtype, one_pass, steps=6):
    p_ref, o_ref = _run(make, dtype, "reference", steps, one_pass)
    p_cpu, o_cpu = _run(make, dtype, "cpu", steps, one_pass)
    tol = TOL[dtype]
    for i, (a, b) in enumerate(zip(p_cpu, p_ref)):
        assert a.dtype == dtype
        assert _rel(a, b) <= tol, f"tensor {i}: relative error {_rel(a, b):.2e} > {tol}"
    for k, (la, lb) in enumerate(zip(o_cpu.levels, o_ref.levels)):
        ha, hb = la.hyperparameters(), lb.hyperparameters()
        for name in hb:
            a, b = torch.tensor(ha[name], dtype=torch.float64), torch.tensor(hb[name], dtype=torch.float64)
            assert torch.isfinite(b).all(), f"level {k} {name} diverged: the test setup is too aggressive"
            assert _rel(a, b) <= tol, f"level {k} {name}: cpu {ha[name]} reference {hb[name]}"
    # the states agree too (what the next step's hypergradient is rebuilt from)
    for p, q in zip(p_cpu, p_ref):
        for key, v in o_ref.state[q].items():
            w = o_cpu.state[p][key]
            assert w.dtype == v.dtype, key
            if v.is_floating_point() and v.numel() > 1:
                assert _rel(w, v) <= tol, key
    return o_cpu


@pytest.mark.parametrize("kind,variant,height", list(_cases()))
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_cpu_matches_reference_float64(kind, variant, height, one_pass):
    opt = _compare(_maker(kind, LEVEL0[kind][variant], height), torch.float64, one_pass)
    assert opt._group_backend(opt.param_groups[0]) == "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", list(LEVEL0))
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_cpu_matches_reference_reduced_precision(kind, dtype, one_pass):
    _compare(_maker(kind, LEVEL0[kind][0], 1), dtype, one_pass)


@pytest.mark.parametrize("kind,variant", [(k, i) for k, vs in LEVEL0.items() for i in range(len(vs))])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_cpu_matches_reference_bfloat16_every_variant(kind, variant, one_pass):
    """bfloat16 parameters take the generic loops, which move elements through registers the way the CUDA
    kernels' packed path does (update_pack / jac_pack): every learned subset checks which state arrays that
    path loads and stores."""
    _compare(_maker(kind, LEVEL0[kind][variant], 1), torch.bfloat16, one_pass)


def test_mixed_dtypes_in_one_group():
    def make(params, backend, one_pass):
        return hf.Adam(params, lr=0.01, hyper=hf.SGD(lr=1e-3), backend=backend)
    sizes = [(5,), (300,)]
    out = {}
    for backend in ("reference", "cpu"):
        params = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(300).bfloat16())]
        torch.manual_seed(0)
        params[0].data.normal_()
        params[1].data.normal_()
        opt = make(params, backend, False)
        for t in range(4):
            for p, g in zip(params, _grads(params, t)):
                p.grad = g
            opt.step()
        out[backend] = (params, opt.hyperparameters())
    for a, b in zip(out["cpu"][0], out["reference"][0]):
        assert _rel(a, b) <= 2e-2
    assert out["cpu"][1]["lr"] == pytest.approx(out["reference"][1]["lr"], rel=1e-4)


def test_non_contiguous_and_channels_last_parameters():
    def build():
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last))
        v = torch.nn.Parameter(torch.randn(6, 8).t())          # a transposed (non-contiguous) view
        return [w, v]
    res = {}
    for backend in ("reference", "cpu"):
        params = build()
        opt = hf.Adam(params, lr=0.01, hyper=hf.SGD(lr=1e-3), backend=backend)
        for t in range(4):
            for p, g in zip(params, _grads(params, t)):
                p.grad = g.contiguous()                           # a layout different from channels_last
            opt.step()
        res[backend] = params
    for a, b in zip(res["cpu"], res["reference"]):
        assert a.stride() == b.stride()
        assert _rel(a, b) <= 1e-5


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_bitwise_deterministic_across_thread_counts(one_pass):
    make = _maker("adam", {}, 2)
    sizes = [(1,), (7,), (1_000_003,), (4097,)]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        p1, o1 = _run(make, torch.float32, "cpu", 4, one_pass, sizes)
        torch.set_num_threads(2)
        p2, o2 = _run(make, torch.float32, "cpu", 4, one_pass, sizes)
        p3, o3 = _run(make, torch.float32, "cpu", 4, one_pass, sizes)
    finally:
        torch.set_num_threads(old)
    for a, b, c in zip(p1, p2, p3):
        assert torch.equal(a, b) and torch.equal(b, c)
    assert o1.hyperparameters() == o2.hyperparameters() == o3.hyperparameters()


def test_many_tensors_in_one_call():
    sizes = [((i * 37) % 301 + 1,) for i in range(230)]
    make = _maker("sgd", {"momentum": 0.9}, 1)
    p_ref, o_ref = _run(make, torch.float32, "reference", 3, False, sizes)
    p_cpu, o_cpu = _run(make, torch.float32, "cpu", 3, False, sizes)
    for a, b in zip(p_cpu, p_ref):
        assert _rel(a, b) <= 1e-5
    assert o_cpu.hyperparameters()["lr"] == pytest.approx(o_ref.hyperparameters()["lr"], rel=1e-5)


MANY = [((i * 37) % 301 + 1,) for i in range(140)]     # more tensors than the host-built scalar table takes


@pytest.mark.parametrize("kind,variant", [("adam", 0), ("adam", 5), ("rmsprop", 0), ("rmsprop", 3)])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_many_tensors_every_table_column(kind, variant, one_pass, monkeypatch):
    """140 tensors (the scalar table built with tensor ops), and again with the host-built table forced: step
    counts, dsigma columns, per-tensor lrs and the previous-gradient flags reach the kernels right either way."""
    from hyperfused.ops import fused
    assert len(MANY) > fused._HOST_TABLE_MAX
    make = _maker(kind, LEVEL0[kind][variant], 2)
    p_ref, o_ref = _run(make, torch.float64, "reference", 4, one_pass, MANY)
    runs = [_run(make, torch.float64, "cpu", 4, one_pass, MANY)]
    monkeypatch.setattr(fused, "_HOST_TABLE_MAX", 1000)
    runs.append(_run(make, torch.float64, "cpu", 4, one_pass, MANY))
    for p_cpu, o_cpu in runs:
        for a, b in zip(p_cpu, p_ref):
            assert _rel(a, b) <= 1e-12
        for la, lb in zip(o_cpu.levels, o_ref.levels):
            ha, hb = la.hyperparameters(), lb.hyperparameters()
            for name in hb:
                assert _rel(torch.tensor(ha[name], dtype=torch.float64),
                            torch.tensor(hb[name], dtype=torch.float64)) <= 1e-12, name


@pytest.mark.parametrize("dt", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("per_tensor", [False, True])
def test_scalar_table_host_and_tensor_paths_agree(per_tensor, dt):
    """The cpu backend's table (host numbers) and the device backends' (tensor ops) hold the same float64 values,
    for float32 hyperparameters too (sigma' of a float32 raw value is computed in float64 on both paths)."""
    from hyperfused.ops import fused
    n = 5
    g = torch.Generator().manual_seed(3)
    lr = torch.rand(n, generator=g, dtype=dt) if per_tensor else torch.tensor(0.01, dtype=dt)
    raw = {"lr": lr, "beta1": torch.tensor(1.1, dtype=dt), "beta2": torch.tensor(2.3, dtype=dt)}
    hp = {"lr": lr, "beta1": fused.ref.sigma(raw["beta1"]), "beta2": fused.ref.sigma(raw["beta2"])}
    steps = [torch.tensor(float(i + 3)) for i in range(n)]
    for valid in ([torch.tensor(i % 2 == 0) for i in range(n)], [0.0, 1.0, 1.0, 0.0, 1.0]):
        for offset in (0.0, 1.0):
            args = ("adam", ("lr", "beta1", "beta2"), n, hp, raw, steps, valid, "cpu", offset)
            host = fused.scalars(*args, host=True)
            ops_path = fused.scalars(*args, host=False)
            assert host.shape == (n, TABLE_COLS) and host.dtype == torch.float64
            torch.testing.assert_close(host, ops_path, rtol=1e-15, atol=0)
            assert host[:, 6].tolist() == [i + 3 + offset for i in range(n)]
            assert host[:, 7].tolist() == [float(v) for v in valid]
            # d/dr of sigma(r) = (tanh r + 1) / 2, written out here rather than read from ref.dsigma (which builds it)
            for col, r in ((4, float(raw["beta1"])), (5, float(raw["beta2"]))):
                assert host[:, col].tolist() == pytest.approx([(1 - math.tanh(r) ** 2) / 2] * n, rel=1e-15)


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_finite_gradient_skips_the_step_on_cpu(one_pass, dtype):
    params = _params(dtype)
    opt = hf.Adam(params, lr=0.01, hyper=hf.Adam(lr=1e-3, hyper=hf.SGD(lr=1e-4)), backend="cpu",
                  one_pass=one_pass)
    for t in range(3):
        for p, g in zip(params, _grads(params, t)):
            p.grad = g
        opt.step()
    before = ([p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"]),
              [lv.hyperparameters() for lv in opt.levels])
    for p, g in zip(params, _grads(params, 3)):
        p.grad = g
    params[3].grad[12345] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    for a, b in zip(params, before[0]):
        assert torch.equal(a, b)
    after = copy.deepcopy(opt.state_dict()["state"])
    after[0]["hyperfused"].pop("skipped_steps")
    before[1][0]["hyperfused"].pop("skipped_steps")
    for key in before[1]:
        for name, v in before[1][key].items() if isinstance(before[1][key], dict) else []:
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, after[key][name]), (key, name)
    assert [lv.hyperparameters() for lv in opt.levels] == before[2]


def test_one_pass_uses_the_hyperparameters_one_step_late():
    """SGD/SGD by hand: exact mode updates lr before using it, one-pass mode after."""
    g1, g2, g3 = (torch.tensor(v, dtype=torch.float64) for v in ([1.0, 2.0], [0.5, -1.0], [2.0, 1.0]))
    a0, kappa = 0.1, 0.01
    for one_pass in (False, True):
        for backend in ("reference", "cpu"):
            x = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
            opt = hf.SGD([x], lr=a0, hyper=hf.SGD(lr=kappa), backend=backend, one_pass=one_pass)
            xs, lrs = [], []
            for g in (g1, g2, g3):
                x.grad = g.double()
                opt.step()
                xs.append(x.detach().clone())
                lrs.append(opt.hyperparameters()["lr"])
            d2, d3 = float(g2 @ g1), float(g3 @ g2)      # delta = g_t . J, J = -g_{t-1}; lr -= kappa delta
            a2 = a0 + kappa * d2
            a3 = a2 + kappa * d3
            if not one_pass:
                exp_x = [-a0 * g1, -a0 * g1 - a2 * g2, -a0 * g1 - a2 * g2 - a3 * g3]
            else:
                exp_x = [-a0 * g1, -a0 * g1 - a0 * g2, -a0 * g1 - a0 * g2 - a2 * g3]
            for got, exp in zip(xs, exp_x):
                torch.testing.assert_close(got, exp.double(), rtol=1e-12, atol=1e-14)
            assert lrs == pytest.approx([a0, a2, a3], rel=1e-12)


def _train_loop(backend, zero, steps=6):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = hf.Adam(model.parameters(), lr=0.01, hyper=hf.SGD(lr=1e-3), backend=backend)
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
        zero(opt, model)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("zero", [
    lambda opt, model: opt.zero_grad(),
    lambda opt, model: opt.zero_grad(set_to_none=False),
], ids=["set_to_none", "zero_in_place"])
def test_previous_gradient_kept_without_a_copy_stays_exact(zero):
    m_ref, o_ref = _train_loop("reference", zero)
    m_cpu, o_cpu = _train_loop("cpu", zero)
    for a, b in zip(m_cpu.parameters(), m_ref.parameters()):
        assert _rel(a.detach(), b.detach()) <= 1e-5
    assert o_cpu.hyperparameters()["lr"] == pytest.approx(o_ref.hyperparameters()["lr"], rel=1e-5)


def test_default_loop_keeps_the_gradient_tensor_itself():
    model, opt = _train_loop("cpu", lambda opt, model: opt.zero_grad())
    for p in model.parameters():
        assert opt.state[p]["prev_grad"] is p.grad         # no copy of the gradient was made
        assert not opt.state[p].get("prev_grad_copy", False)


def test_gradient_changed_in_place_behind_the_optimizer_is_detected():
    """model.zero_grad(set_to_none=False) zeroes the kept gradient in place: detected by its version counter,
    one step's term of that tensor is dropped (with a warning), and the gradient is copied from then on."""
    from hyperfused.ops import fused as cpu_backend
    cpu_backend._warned[0] = False
    with pytest.warns(UserWarning, match="modified in place after the optimizer step"):
        model, opt = _train_loop("cpu", lambda opt, model: model.zero_grad(set_to_none=False))
    for p in model.parameters():
        assert opt.state[p]["prev_grad_copy"] is True
        assert opt.state[p]["prev_grad"] is not p.grad
        assert torch.equal(opt.state[p]["prev_grad"], p.grad)   # a faithful copy of the last gradient
    assert math.isfinite(opt.hyperparameters()["lr"])


@contextlib.contextmanager
def _op_calls():
    """How many times each hyperfused op is called inside, as torch's dispatcher sees the calls (whichever binding
    makes them)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode
    calls = Counter()

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "hyperfused":
                calls[func._opname] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        yield calls


def test_levels_above_run_as_the_compiled_tower_ops():
    """On the cpu backend the levels above level 0 are the C++ tower ops (the comparisons above hold them to
    the reference): pass A (one-pass mode: pass B) and the tower in one op each step, as the dispatcher sees the
    calls; a tower taller than they take falls back to the Python tower, with the same results."""
    from hyperfused.ops import tower
    with _op_calls() as calls:
        _compare(_maker("adam", {}, 3), torch.float64, False, steps=3)
    assert calls["hyper_reduce_tower"] == 3 and calls["hyper_tower_commit"] == 3, calls
    assert not (calls["hyper_tower_plan"] or calls["hyper_update_tower"] or calls["hyper_reduce"]), calls
    with _op_calls() as calls:
        _compare(_maker("adam", {}, 3), torch.float64, True, steps=3)
    assert calls["hyper_update_tower"] == 3 and calls["hyper_tower_commit"] == 3, calls
    assert not (calls["hyper_tower_plan"] or calls["hyper_reduce_tower"]), calls

    def tall(params, backend, one_pass):
        hyper = hf.SGD(lr=1e-9)
        for _ in range(tower.MAX_LEVELS - 1):
            hyper = hf.SGD(lr=1e-7, hyper=hyper)
        return hf.SGD(params, lr=0.05, hyper=hyper, backend=backend, one_pass=one_pass)
    with _op_calls() as calls:
        _compare(tall, torch.float64, False, steps=3)
    assert calls["hyper_reduce"] == 3 and not any(k.startswith("hyper_tower") or k.endswith("_tower")
                                                  for k in calls), calls
    assert not tower.supported(*_tower_of(tall))


def _tower_of(make):
    params = _params(torch.float64)
    opt = make(params, "cpu", False)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    gt = opt._group_tower(0)
    return gt["levels"], opt._level_specs(0)


@pytest.mark.parametrize("make", [
    lambda p, b, o: hf.SGD(p, lr=0.05, per_tensor=True, hyper=hf.Adam(lr=1e-3, per_tensor=True,
                                                                       hyper=hf.SGD(lr=1e-4)), backend=b, one_pass=o),
    lambda p, b, o: hf.Adagrad(p, lr=0.05, hyper=hf.RMSprop(lr=1e-3, hyper=hf.SGD(lr=1e-5, momentum=0.5)),
                               backend=b, one_pass=o),
    lambda p, b, o: hf.RMSprop(p, lr=0.01, per_tensor=True,
                               hyper=hf.Adam(lr=1e-4, learn=("lr", "beta1"), hyper=hf.SGD(lr=1e-6)), backend=b,
                               one_pass=o),
], ids=["per-tensor levels 0 and 1", "adagrad/rmsprop/sgd(m)", "rmsprop per-tensor/adam[lr,beta1]/sgd"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_compiled_tower_on_mixed_towers(make, one_pass):
    _compare(make, torch.float64, one_pass)


def _fusion_run(make, fused, monkeypatch, steps=5, drop=None, one_pass=False):
    """Train with pass A (one-pass: pass B) and the tower as one op, hyper_reduce_tower / hyper_update_tower
    (fused=True), or as two (then hyper_tower_plan); ``drop``: a parameter that gets no gradient at odd steps."""
    from hyperfused.ops import tower
    if not fused:
        monkeypatch.setattr(tower, "fusable", lambda *a, **k: False)
    params = _params(torch.float64)
    opt = make(params, "cpu", one_pass)
    with _op_calls() as calls:
        for t in range(steps):
            for i, (p, g) in enumerate(zip(params, _grads(params, t))):
                p.grad = None if (drop == i and t % 2) else g
            opt.step()
    monkeypatch.undo()
    return params, opt, calls["hyper_update_tower" if one_pass else "hyper_reduce_tower"]


@pytest.mark.parametrize("make", [
    _maker("adam", {}, 2),
    _maker("sgd", dict(momentum=0.9), 3),
    _maker("sgd", dict(per_tensor=True), 1),
    lambda p, b, o: hf.RMSprop(p, lr=0.01, hyper=hf.Adam(lr=1e-4, hyper=hf.SGD(lr=1e-5)), backend=b,
                               one_pass=o),
    lambda p, b, o: hf.Adagrad(p, lr=0.05, per_tensor=True, hyper=hf.SGD(lr=1e-6, per_tensor=True,
                                                                         hyper=hf.SGD(lr=1e-9)), backend=b,
                               one_pass=o),
], ids=["adam-2", "sgd-momentum-3", "sgd-per-tensor-1", "rmsprop-adam-sgd", "adagrad-per-tensor-3"])
@pytest.mark.parametrize("drop", [None, 2], ids=["all-grads", "a-tensor-without-grad"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_pass_a_and_tower_in_one_op_match_the_two_ops(make, drop, one_pass, monkeypatch):
    """hyper_reduce_tower (pass A, its rows made into level 0's flat hypergradient, the tower's plan), and in
    one-pass mode hyper_update_tower, give the trajectory of the pass's op + the Python glue +
    hyper_tower_plan, in float64 to rounding; where a per-tensor lr misses a gradient the optimizer takes the
    two-op path (the rows are not the group's vector then)."""
    p1, o1, n1 = _fusion_run(make, True, monkeypatch, drop=drop, one_pass=one_pass)
    p2, o2, n2 = _fusion_run(make, False, monkeypatch, drop=drop, one_pass=one_pass)
    per = o1.param_groups[0].get("per_tensor", False)
    assert n1 == (1 + 2 if (drop is not None and per) else 5) and n2 == 0
    for a, b in zip(p1, p2):
        assert _rel(a.detach(), b.detach()) <= 1e-13
    for la, lb in zip(o1.levels, o2.levels):
        ha, hb = la.hyperparameters(), lb.hyperparameters()
        for name in hb:
            a, b = torch.tensor(ha[name], dtype=torch.float64), torch.tensor(hb[name], dtype=torch.float64)
            assert torch.isfinite(b).all(), f"{name} diverged: the test setup is too aggressive"
            assert _rel(a, b) <= 1e-13, name


def test_reduce_tower_op_rejects_a_map_that_does_not_fit_the_tower():
    from hyperfused.ops import fused, tower
    params = _params(torch.float64)
    opt = hf.Adam(params, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend="cpu")
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    opt.step()
    levels, specs = _tower_of(lambda p, b, o: hf.Adam(p, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend=b))
    args = tower._args(levels, specs, torch.device("cpu"), torch.float64)
    states = [opt.state[p] for p in params]
    head, g, s0, s1, s2, scal = fused._reduce_args("adam", {"eps": 1e-8}, ("lr", "beta1", "beta2"),
                                                    [p.grad for p in params], states,
                                                    [st["moved"] for st in states],
                                                    opt._values_of(opt._level_specs(0)[0], levels[0]["hp"]),
                                                    levels[0]["hp"])
    op = torch.ops.hyperfused.hyper_reduce_tower
    rows, scr, ok = op(*head, g, s0, s1, s2, scal, [0, 0, 1, 2], *args)
    assert rows.shape == (len(params), 4) and bool(ok)
    with pytest.raises(RuntimeError, match="delta of 2 entries; level 1 optimizes 3"):
        op(*head, g, s0, s1, s2, scal, [0, 0, 1], *args)
    with pytest.raises(RuntimeError, match="column 5 is not 0, 1 or 2"):
        op(*head, g, s0, s1, s2, scal, [0, 0, 1, 5], *args)
    with pytest.raises(RuntimeError, match="d0_map must be"):
        op(*head, g, s0, s1, s2, scal, [0], *args)


def test_update_tower_op_checks_its_tower_arguments_before_writing():
    """A bad d0_map is refused before pass B writes: the parameters and the state stay as they were."""
    from hyperfused.ops import fused, tower
    make = lambda p, b, o: hf.Adam(p, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend=b, one_pass=o)
    params = _params(torch.float64)
    opt = make(params, "cpu", True)
    for t in range(2):
        for p, g in zip(params, _grads(params, t)):
            p.grad = g
        opt.step()
    levels, specs = opt._group_tower(0)["levels"], opt._level_specs(0)
    args = tower._args(levels, specs, torch.device("cpu"), torch.float64)
    states = [opt.state[p] for p in params]
    before = [p.detach().clone() for p in params], [st["exp_avg"].clone() for st in states]
    hp = levels[0]["hp"]
    vals = opt._values_of(specs[0], hp)
    jac = (vals, hp, [st["moved"] for st in states])
    ok = torch.ones((), dtype=torch.bool)
    monkey = fused._d0_map
    try:
        fused._d0_map = lambda *a: [0, 0, 1]           # two entries; level 1 optimizes three
        with pytest.raises(RuntimeError, match="level 1 optimizes 3"), torch.no_grad():     # (as a step calls it)
            fused.hyper_update("adam", specs[0][4], specs[0][2], False, params, [p.grad for p in params], states,
                               vals, ok, raw=hp, jac=jac, tower_args=args)
    finally:
        fused._d0_map = monkey
    for p, b in zip(params, before[0]):
        assert torch.equal(p.detach(), b)
    for st, b in zip(states, before[1]):
        assert torch.equal(st["exp_avg"], b)


@pytest.mark.parametrize("make", list(NESTEROV_DAMPENED_TOWERS.values()), ids=list(NESTEROV_DAMPENED_TOWERS))
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_compiled_tower_runs_nesterov_and_dampened_levels(make, one_pass):
    """SGD with Nesterov's momentum or dampening as a level above level 0 runs in the C++ tower ops (not the Python
    tower), and its trajectory, hyperparameters and state (buffers, kept gradients, step counts) are the
    reference's."""
    from hyperfused.ops import tower
    with _op_calls() as calls:
        o_cpu = _compare(make, torch.float64, one_pass, steps=6)
    tower_ops = ("hyper_tower_plan", "hyper_reduce_tower", "hyper_update_tower")
    assert sum(calls[name] for name in tower_ops) == 6 and tower.supported(*_tower_of(make)), calls
    _, o_ref = _run(make, torch.float64, "reference", 6, one_pass)
    assert_tower_states_equal(o_cpu, o_ref, 6)


@pytest.mark.parametrize("make", [
    lambda p, b, o: hf.SGD(p, lr=0.05, per_tensor=True, hyper=hf.Adam(lr=1e-3, per_tensor=True,
                                                                       hyper=hf.SGD(lr=1e-4)), backend=b, one_pass=o),
    lambda p, b, o: hf.Adam(p, lr=0.01, hyper=hf.Adam(lr=1e-3, hyper=hf.SGD(lr=1e-5, momentum=0.5)), backend=b,
                            one_pass=o),
    lambda p, b, o: hf.RMSprop(p, lr=0.01, per_tensor=True,
                               hyper=hf.Adam(lr=1e-4, learn=("lr", "beta1"), hyper=hf.SGD(lr=1e-6)), backend=b,
                               one_pass=o),
    lambda p, b, o: hf.AdamW(p, lr=0.01, learn=("lr", "weight_decay"), hyper=hf.SGD(lr=1e-5, momentum=0.9,
                                                                                      nesterov=True), backend=b,
                             one_pass=o),
], ids=["per-tensor levels 0 and 1", "adam/adam/sgd(m)", "rmsprop per-tensor/adam[lr,beta1]/sgd",
        "adamw[lr,wd]/sgd(nesterov)"])
def test_tower_plan_shared_among_threads_as_on_cuda_equals_the_serial_plan(make, monkeypatch):
    """The CUDA kernels run the levels above in one block whose threads share the vectors' entries
    (csrc/hyperfused/tower.h's parallel policy). _tower_plan_threads runs that schedule on host threads (the same
    barriers, sums in thread order): with 1 thread it is the serial plan bit for bit; with 2, 3, 7 and 64 threads
    (more threads than entries included) the same scratch to float64 round-off and the same verdict, at every step of
    a run on 37 tensors, and a run whose tower is planned by 7 threads stays with the serial one. The commit by
    threads (_tower_commit_threads, into copies) writes what the serial one writes, bit for bit."""
    from hyperfused.ops import tower
    calls = []
    real_plan = tower.plan

    def compare(levels, specs, d0_flat, finite):
        # (here, before the step commits: the ops read the optimizer's own tensors)
        out = real_plan(levels, specs, d0_flat, finite)
        dt = levels[0]["hp"]["lr"].dtype
        args = tower._args(levels, specs, d0_flat.device, dt)
        scr, ok = out[0][0], out[1]
        for threads in (1, 2, 3, 7, 64):
            s2, ok2 = torch.ops.hyperfused._tower_plan_threads(*args, d0_flat.to(dt).contiguous(), finite.reshape(()),
                                                               threads)
            if threads == 1:
                assert torch.equal(s2, scr)
            torch.testing.assert_close(s2, scr, rtol=1e-12, atol=1e-15)
            assert bool(ok2) == bool(ok)
        # the commit, serial into copies of the slots (the op writes the tensors it is given) and by threads
        desc, eps, slots = args
        for verdict in (ok, ~ok):
            want = [t.clone() for t in slots]
            torch.ops.hyperfused.hyper_tower_commit(desc, eps, want, scr, verdict)
            for threads in (1, 3, 64):
                got = torch.ops.hyperfused._tower_commit_threads(desc, eps, slots, scr, verdict, threads)
                assert all(torch.equal(a, b) for a, b in zip(got, want))
        calls.append(threads)
        return out

    def threads_plan(levels, specs, d0_flat, finite, threads=7):
        dt = levels[0]["hp"]["lr"].dtype
        args = tower._args(levels, specs, d0_flat.device, dt)
        scr, ok = torch.ops.hyperfused._tower_plan_threads(*args, d0_flat.to(dt).contiguous(), finite.reshape(()),
                                                           threads)
        return (scr, args), ok

    monkeypatch.setattr(tower, "fusable", lambda *a, **k: False)    # the tower as its own op (tower.plan)
    shapes = [((i * 7) % 11 + 1,) for i in range(37)]

    def run():
        params = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i), dtype=torch.float64))
                  for i, s in enumerate(shapes)]
        opt = make(params, "cpu", False)
        for t in range(4):
            gg = torch.Generator().manual_seed(50 + t)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gg, dtype=torch.float64) * 0.3 + 0.1 * p.detach()
            opt.step()
        return params, opt

    monkeypatch.setattr(tower, "plan", compare)
    params, opt = run()
    assert len(calls) == 4
    monkeypatch.setattr(tower, "plan", threads_plan)
    params7, opt7 = run()
    for a, b in zip(params7, params):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-14)
    for la, lb in zip(opt7.levels, opt.levels):
        for k, v in lb.hyperparameters().items():
            assert la.hyperparameters()[k] == pytest.approx(v, rel=1e-10, abs=1e-14), k
