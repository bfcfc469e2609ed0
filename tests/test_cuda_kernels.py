"""The "cuda" backend against the reference backend on CUDA tensors. Skipped without a GPU (and without the
CUDA extension); written to run unchanged on a GPU machine."""
import copy

import pytest
import torch

import hyperfused as hf
from hyperfused import ops
from hyperfused.ops import agd as agd_ops
from optim_infos import NESTEROV_DAMPENED_TOWERS, assert_tower_states_equal

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and ops.cuda_extension_available()),
                                reason="needs a CUDA device and the CUDA extension (hyperfused._C_cuda)")

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3, torch.float64: 1e-12}
SIZES = [(1,), (7,), (4097,), (278011,), (3, 1, 5, 5)]


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _assert_same_run(params_a, opt_a, params_b, opt_b, tol_params, tol_hyper):
    """Two runs agree: every parameter within tol_params, every level's hyperparameters within tol_hyper
    (relative norms)."""
    for a, b in zip(params_a, params_b):
        assert _rel(a.detach(), b.detach()) <= tol_params
    for la, lb in zip(opt_a.levels, opt_b.levels):
        for k, v in lb.hyperparameters().items():
            assert _rel(torch.tensor(la.hyperparameters()[k], dtype=torch.float64),
                        torch.tensor(v, dtype=torch.float64)) <= tol_hyper


def _run(make, dtype, backend, sizes, steps=5, one_pass=False):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.5).to(dtype).cuda()) for s in sizes]
    opt = make(params, backend, one_pass)
    for t in range(steps):
        gg = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = ((torch.randn(p.shape, generator=gg).cuda() + 0.3 * p.detach().float()) * 0.1).to(dtype)
        opt.step()
    return params, opt


MAKERS = {
    "adam/sgd": lambda p, b, o: hf.Adam(p, lr=0.01, hyper=hf.SGD(lr=1e-7), backend=b, one_pass=o),
    "adam[lr]/sgd": lambda p, b, o: hf.Adam(p, lr=0.01, learn=("lr",), hyper=hf.SGD(lr=1e-7), backend=b, one_pass=o),
    "sgd(m)/adam": lambda p, b, o: hf.SGD(p, lr=0.05, momentum=0.9, hyper=hf.Adam(lr=1e-4), backend=b, one_pass=o),
    "sgd per-tensor/sgd": lambda p, b, o: hf.SGD(p, lr=0.05, per_tensor=True, hyper=hf.SGD(lr=1e-7), backend=b,
                                                 one_pass=o),
    "rmsprop/sgd/sgd": lambda p, b, o: hf.RMSprop(p, hyper=hf.SGD(lr=1e-7, hyper=hf.SGD(lr=1e-8)), backend=b,
                                                  one_pass=o),
    "adagrad/rmsprop": lambda p, b, o: hf.Adagrad(p, lr=0.05, hyper=hf.RMSprop(lr=1e-5), backend=b, one_pass=o),
}


@pytest.mark.parametrize("name", list(MAKERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_cuda_matches_reference(name, dtype, one_pass):
    p_ref, o_ref = _run(MAKERS[name], dtype, "reference", SIZES, one_pass=one_pass)
    p_cu, o_cu = _run(MAKERS[name], dtype, "cuda", SIZES, one_pass=one_pass)
    assert o_cu._group_backend(o_cu.param_groups[0]) == "cuda"
    _assert_same_run(p_cu, o_cu, p_ref, o_ref, TOL[dtype], max(TOL[dtype], 1e-6))


TOWER_VARIANTS = dict(NESTEROV_DAMPENED_TOWERS)
TOWER_VARIANTS["adamw[lr,wd]/sgd(m)/sgd"] = lambda p, b, o: hf.AdamW(
    p, lr=1e-2, weight_decay=0.1, learn=("lr", "weight_decay"), hyper=hf.SGD(lr=1e-7, momentum=0.5, hyper=hf.SGD(
        lr=1e-12)), backend=b, one_pass=o)


@pytest.mark.parametrize("name", list(TOWER_VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_cuda_tower_of_nesterov_dampened_and_learned_decay_levels(name, dtype, one_pass):
    """Nesterov's and dampened SGD above level 0 and a learned decoupled decay run in the CUDA tower kernels, as on
    the CPU (tests/test_cpu_kernels.py, test_torch_keywords.py hold those to the reference)."""
    p_ref, o_ref = _run(TOWER_VARIANTS[name], dtype, "reference", SIZES, one_pass=one_pass)
    p_cu, o_cu = _run(TOWER_VARIANTS[name], dtype, "cuda", SIZES, one_pass=one_pass)
    _assert_same_run(p_cu, o_cu, p_ref, o_ref, TOL[dtype], max(TOL[dtype], 1e-6))
    if dtype == torch.float64:
        assert_tower_states_equal(o_cu, o_ref, 5)


def test_many_tensors_in_one_call():
    sizes = [((i * 37) % 3001 + 1,) for i in range(230)]
    p_ref, o_ref = _run(MAKERS["adam/sgd"], torch.float32, "reference", sizes)
    p_cu, o_cu = _run(MAKERS["adam/sgd"], torch.float32, "cuda", sizes)
    for a, b in zip(p_cu, p_ref):
        assert _rel(a, b) <= 2e-5


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_a_pass_is_one_launch_whatever_the_tensors_and_its_table_is_kept(one_pass):
    """The kernels read one table per call from device memory (csrc/cuda/tables.h): 230 small tensors and one of
    331 chunks (more than the 24 tensors and 320 blocks the by-value tables took) are one launch per pass, equal to
    the reference; a step at the same addresses uploads no table (its table is kept)."""
    from torch.profiler import ProfilerActivity, profile
    sizes = [((i * 37) % 3001 + 1,) for i in range(230)] + [(65536 * 330 + 3,)]
    p_ref, o_ref = _run(MAKERS["adam/sgd"], torch.float32, "reference", sizes, steps=3, one_pass=one_pass)
    p_cu, o_cu = _run(MAKERS["adam/sgd"], torch.float32, "cuda", sizes, steps=3, one_pass=one_pass)
    for a, b in zip(p_cu, p_ref):
        assert _rel(a.detach(), b.detach()) <= 2e-5
    o_cu.step()                                    # the same gradients again: the same addresses
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        o_cu.step()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if "hyperfused" in e.name or "_kernel" in e.name]
    for k in ("reduce_kernel", "update_kernel"):      # (one-pass: reduce_kernel is the finiteness count)
        assert sum(k in n for n in names) == 1, (k, names)
    assert not any("upload_kernel" in n for n in names), names


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_per_tensor_lrs_of_more_tensors_than_the_towers_threads(one_pass):
    """The levels above run in one block of 256 threads sharing the vectors' entries (csrc/hyperfused/tower.h):
    per-tensor lrs of 600 tensors (each thread several entries) equal the reference."""
    sizes = [((i * 13) % 97 + 1,) for i in range(600)]
    p_ref, o_ref = _run(MAKERS["sgd per-tensor/sgd"], torch.float64, "reference", sizes, one_pass=one_pass)
    p_cu, o_cu = _run(MAKERS["sgd per-tensor/sgd"], torch.float64, "cuda", sizes, one_pass=one_pass)
    _assert_same_run(p_cu, o_cu, p_ref, o_ref, 1e-12, 1e-10)


def test_step_does_not_synchronise_with_the_host():
    params, opt = _run(MAKERS["adam/sgd"], torch.float32, "cuda", SIZES, steps=2)
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_non_finite_gradient_skips_on_cuda():
    params, opt = _run(MAKERS["adam/sgd"], torch.float32, "cuda", SIZES, steps=3)
    before = [p.detach().clone() for p in params]
    params[3].grad[5] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    for a, b in zip(params, before):
        assert torch.equal(a, b)


def test_deterministic_reductions_on_cuda():
    runs = [_run(MAKERS["adam/sgd"], torch.float32, "cuda", SIZES)[1].hyperparameters() for _ in range(2)]
    assert runs[0] == runs[1]


def test_agd_ops_on_cuda_match_the_cpu_kernels():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(16, 8, generator=g), torch.randn(6, 4, 3, 3, generator=g)]
    slices = [1, 9]
    cpu_sq = torch.ops.hyperfused.agd_sumsq(grads, slices)
    cu_sq = torch.ops.hyperfused.agd_sumsq([x.cuda() for x in grads], slices)
    torch.testing.assert_close(cu_sq.cpu(), cpu_sq, rtol=1e-5, atol=0)
    vs = [torch.randn(1, 8, dtype=torch.float64, generator=g), torch.randn(9, 4, dtype=torch.float64, generator=g)]
    sq_c, gv_c = torch.ops.hyperfused.agd_gv(grads, vs)
    sq_g, gv_g = torch.ops.hyperfused.agd_gv([x.cuda() for x in grads], [v.cuda() for v in vs])
    for a, b in zip(gv_g, gv_c):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-7)
    us = [x / x.norm(dim=1, keepdim=True) for x in gv_c]
    for a, b in zip(torch.ops.hyperfused.agd_gtu([x.cuda() for x in grads], [u.cuda() for u in us]),
                    torch.ops.hyperfused.agd_gtu(grads, us)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-7)
    # tall tensors: g^T u over ranges of rows whose partial sums are added in order (agd_cuda.h agd_gtu_splits)
    tall = [torch.randn(3000, 5, generator=g, dtype=torch.float64), torch.randn(900, 3, 3, 3, generator=g)]
    tall_us = [torch.randn(1, 3000, dtype=torch.float64, generator=g), torch.randn(9, 900, dtype=torch.float64,
                                                                                  generator=g)]
    got = torch.ops.hyperfused.agd_gtu([x.cuda() for x in tall], [u.cuda() for u in tall_us])
    for a, x, u in zip(got, tall, tall_us):
        m = agd_ops.as_slices(x.double())
        torch.testing.assert_close(a.cpu(), torch.bmm(m.transpose(1, 2), u.unsqueeze(2)).squeeze(2), rtol=1e-9,
                                   atol=1e-9)
    again = torch.ops.hyperfused.agd_gtu([x.cuda() for x in tall], [u.cuda() for u in tall_us])
    assert all(torch.equal(a, b) for a, b in zip(got, again))
    params_c = [torch.randn(16, 8, generator=g), torch.randn(6, 4, 3, 3, generator=g)]
    params_g = [p.clone().cuda() for p in params_c]
    coef = torch.rand(10, dtype=torch.float64, generator=g)
    torch.ops.hyperfused.agd_update(params_c, grads, coef)
    torch.ops.hyperfused.agd_update(params_g, [x.cuda() for x in grads], coef.cuda())
    for a, b in zip(params_g, params_c):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not ops.triton_available(), reason="triton is not installed")
@pytest.mark.parametrize("name", ["adam/sgd", "sgd per-tensor/sgd", "rmsprop/sgd/sgd"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_cuda_matches_triton(name, one_pass):
    """The two GPU backends agree with each other (each is also held to the reference above)."""
    p_tri, o_tri = _run(MAKERS[name], torch.float32, "triton", SIZES, one_pass=one_pass)
    p_cu, o_cu = _run(MAKERS[name], torch.float32, "cuda", SIZES, one_pass=one_pass)
    _assert_same_run(p_cu, o_cu, p_tri, o_tri, 2e-5, 1e-5)


@pytest.mark.parametrize("name", ["adam/sgd", "rmsprop/sgd/sgd", "sgd per-tensor/sgd"])
def test_cuda_step_does_not_synchronise_with_the_host(name):
    """The cuda backend's step, levels above included (the compiled tower ops' one-thread kernels), never
    waits for the device."""
    params, opt = _run(MAKERS[name], torch.float32, "cuda", SIZES, steps=2)
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_triton_step_does_not_synchronise_with_the_host():
    if not ops.triton_available():
        pytest.skip("triton is not installed")
    params, opt = _run(MAKERS["adam/sgd"], torch.float32, "triton", SIZES, steps=2)
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_agd_normalize_rows_on_cuda_matches_the_cpu_kernel():
    g = torch.Generator().manual_seed(5)
    shapes = [(3, 5), (9, 512), (1, 3000), (49, 7)] + [(2, 3)] * 40       # more tensors than one table holds
    xs = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    xs[1][4].zero_()
    dc = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    dg = [d.cuda() for d in dc]
    nc = torch.ops.hyperfused.agd_normalize_rows(xs, dc)
    ng = torch.ops.hyperfused.agd_normalize_rows([x.cuda() for x in xs], dg)
    torch.testing.assert_close(ng.cpu(), nc, rtol=1e-14, atol=0)
    for a, b in zip(dg, dc):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-14, atol=1e-16)


def test_agd_kernels_on_cuda_many_tensors_and_large_ones():
    """More tensors than one table holds, a tensor larger than one table's blocks, 7x7 kernels (49 slices)."""
    g = torch.Generator().manual_seed(1)
    shapes = [(i % 9 + 1, i % 5 + 2) for i in range(40)] + [(3000, 8000), (16, 8, 7, 7), (5, 3, 3, 3)]
    grads = [torch.randn(*s, generator=g) for s in shapes]
    slices = [agd_ops.slices_of(x) for x in grads]
    want = torch.cat([agd_ops.as_slices(x.double()).pow(2).sum(dim=(1, 2)) for x in grads])
    got = torch.ops.hyperfused.agd_sumsq([x.cuda() for x in grads], slices)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=0)
    again = torch.ops.hyperfused.agd_sumsq([x.cuda() for x in grads], slices)
    assert torch.equal(got, again)                      # deterministic
    coef = torch.rand(sum(slices), dtype=torch.float64, generator=g)
    params = [torch.randn(*s, generator=g) for s in shapes]
    cu = [p.cuda() for p in params]
    torch.ops.hyperfused.agd_update(cu, [x.cuda() for x in grads], coef.cuda())
    torch.ops.hyperfused.agd_update(params, grads, coef)
    for a, b in zip(cu, params):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm", ["frobenius", "spectral"])
def test_agd_on_cuda_matches_the_reference(norm):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 36, 5, bias=False)).cuda()
    ref = copy.deepcopy(net)
    opt = hf.AGD(net.parameters(), norm=norm, backend="cuda", tol=1e-7, max_iter=50)
    opt_ref = hf.AGD(ref.parameters(), norm=norm, backend="reference", tol=1e-7, max_iter=50)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        x, y = torch.randn(16, 1, 6, 6, generator=g).cuda(), torch.randint(0, 5, (16,), generator=g).cuda()
        for m, o in ((net, opt), (ref, opt_ref)):
            m.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        assert _rel(a.detach(), b.detach()) <= (1e-5 if norm == "frobenius" else 1e-3)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_grad_scaler_unscales_inside_the_kernels(backend, one_pass):
    """torch.amp.GradScaler on CUDA: the kernels apply 1 / scale as they read the gradients (which stay scaled,
    as with torch's fused optimizers); training equals unscaled training and an overflow skips the step."""
    if backend == "triton" and not ops.triton_available():
        pytest.skip("triton is not installed")
    torch.manual_seed(0)
    m1 = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).cuda()
    m2 = copy.deepcopy(m1)
    o1 = hf.Adam(m1.parameters(), lr=1e-2, hyper=hf.SGD(lr=1e-3), one_pass=one_pass, backend=backend)
    o2 = hf.Adam(m2.parameters(), lr=1e-2, hyper=hf.SGD(lr=1e-3), one_pass=one_pass, backend=backend)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 12)
    for t in range(5):
        x, y = torch.randn(32, 12, device="cuda"), torch.randint(0, 3, (32,), device="cuda")
        o1.zero_grad()
        torch.nn.functional.cross_entropy(m1(x), y).backward()
        o1.step()
        o2.zero_grad()
        scaler.scale(torch.nn.functional.cross_entropy(m2(x), y)).backward()
        grads = [p.grad.clone() for p in m2.parameters()]
        scaler.step(o2)
        scaler.update()
        assert all(torch.equal(p.grad, g) for p, g in zip(m2.parameters(), grads))   # left scaled
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    o2.zero_grad()
    x, y = torch.randn(32, 12, device="cuda"), torch.randint(0, 3, (32,), device="cuda")
    scaler.scale(torch.nn.functional.cross_entropy(m2(x), y)).backward()
    m2[0].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in m2.parameters()]
    scaler.step(o2)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(m2.parameters(), before))
    assert o2.skipped_steps == 1


@pytest.mark.parametrize("name", ["adam/sgd", "rmsprop/sgd/sgd", "sgd per-tensor/sgd"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_cuda_step_runs_its_pass_and_the_tower_as_one_op(name, one_pass, monkeypatch):
    """The cuda backend runs pass A (one-pass mode: pass B) with hyper_reduce_tower (hyper_update_tower), whose
    finishing kernel runs the levels above in the same launch, and matches the two-op path (the pass's op, then
    hyper_tower_plan) in float64."""
    from hyperfused.ops import tower
    used = []
    fn = "update_plan" if one_pass else "reduce_plan"
    real = getattr(tower, fn)
    monkeypatch.setattr(tower, fn, lambda *a, **k: used.append(1) or real(*a, **k))
    p1, o1 = _run(MAKERS[name], torch.float64, "cuda", SIZES, one_pass=one_pass)
    assert len(used) == 5
    monkeypatch.setattr(tower, "fusable", lambda *a, **k: False)
    p2, o2 = _run(MAKERS[name], torch.float64, "cuda", SIZES, one_pass=one_pass)
    assert len(used) == 5
    _assert_same_run(p1, o1, p2, o2, 1e-13, 1e-13)


def test_reduce_tower_op_on_cuda_matches_the_cpu_op():
    """hyper_reduce_tower on CUDA tensors (one launch for the finish and the tower) = the CPU op, float64."""
    from hyperfused.ops import fused, tower
    make = MAKERS["adam/sgd"]
    results = {}
    for dev in ("cpu", "cuda"):
        g = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.5).double().to(dev)) for s in SIZES]
        opt = make(params, dev, False)
        for t in range(3):
            gg = torch.Generator().manual_seed(100 + t)
            for p in params:
                p.grad = (torch.randn(p.shape, generator=gg, dtype=torch.float64) * 0.1).to(dev)
            opt.step()
        gt, specs = opt._group_tower(0), opt._level_specs(0)
        levels = gt["levels"]
        states = [opt.state[p] for p in params]
        _, _, learned, per, cfg = specs[0]
        (scr, _), ok = tower.reduce_plan("adam", cfg, learned, per, [p.grad for p in params], states,
                                         [st["moved"] for st in states], opt._values_of(specs[0], levels[0]["hp"]),
                                         levels[0]["hp"], levels, specs)
        results[dev] = (scr.cpu(), bool(ok))
    assert results["cuda"][1] == results["cpu"][1]
    assert _rel(results["cuda"][0], results["cpu"][0]) <= 1e-12
