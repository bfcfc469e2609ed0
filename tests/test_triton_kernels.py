"""The "triton" backend against the reference backend (and the paper's package), in both modes, every dtype.

Without a GPU the kernels run under the Triton interpreter (TRITON_INTERPRET=1, set by conftest.py) on CPU
tensors; on a GPU machine the same tests run them compiled, on CUDA tensors. Interpreter runs are slow, so the
tensors are small except where a size is the point (278011 elements, 200+ tensors).
"""
import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import hyperfused as hf
from optim_infos import LEVEL0  # the shared test matrix (hyperfused.kinds)
from optim_infos import NESTEROV_DAMPENED_TOWERS, assert_tower_states_equal
from optim_infos import cases as _cases
from optim_infos import maker as _maker
from hyperfused import ops

pytestmark = pytest.mark.skipif(not ops.triton_available(), reason="triton is not installed")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SMALL = [(1,), (7,), (13, 11), (4097,), (3, 1, 5, 5)]
ODD = [(1,), (7,), (4097,), (278011,)]
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def _small_tiles():
    """Small tiles, so that tensors of a few thousand elements span several programs and tiles."""
    from hyperfused.ops.triton import hyper
    saved = dict(hyper.CONFIG)
    hyper.configure(block=256 if DEV == "cpu" else 1024, chunk=1024 if DEV == "cpu" else 8192)
    yield
    hyper.configure(block=saved["BLOCK"], chunk=saved["CHUNK"], num_warps=saved["num_warps"])


def _params(dtype, sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.5).to(dtype).to(DEV)) for s in sizes]


def _grads(params, step, scale=1.0):
    g = torch.Generator().manual_seed(1000 + step)
    return [((torch.randn(p.shape, generator=g).to(DEV) + 0.3 * p.detach().float()) * scale).to(p.dtype)
            for p in params]


def _run(make, dtype, backend, steps=4, one_pass=False, sizes=SMALL):
    params = _params(dtype, sizes)
    opt = make(params, backend, one_pass)
    for t in range(steps):
        for p, g in zip(params, _grads(params, t)):
            p.grad = g
        opt.step()
    return params, opt


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _compare(make, dtype, one_pass, steps=4, sizes=SMALL):
    p_ref, o_ref = _run(make, dtype, "reference", steps, one_pass, sizes)
    p_tri, o_tri = _run(make, dtype, "triton", steps, one_pass, sizes)
    assert o_tri._group_backend(o_tri.param_groups[0]) == "triton"
    tol = TOL[dtype]
    for i, (a, b) in enumerate(zip(p_tri, p_ref)):
        assert a.dtype == dtype
        assert _rel(a, b) <= tol, f"tensor {i}: relative error {_rel(a, b):.2e} > {tol}"
    for k, (la, lb) in enumerate(zip(o_tri.levels, o_ref.levels)):
        ha, hb = la.hyperparameters(), lb.hyperparameters()
        for name in hb:
            a, b = torch.tensor(ha[name], dtype=torch.float64), torch.tensor(hb[name], dtype=torch.float64)
            assert torch.isfinite(b).all(), f"level {k} {name} diverged: the test setup is too aggressive"
            assert _rel(a, b) <= max(tol, 1e-6) if dtype != torch.float64 else _rel(a, b) <= tol, \
                f"level {k} {name}: triton {ha[name]} reference {hb[name]}"
    for p, q in zip(p_tri, p_ref):
        for key, v in o_ref.state[q].items():
            w = o_tri.state[p][key]
            assert w.dtype == v.dtype, key
            if v.is_floating_point() and v.numel() > 1:
                assert _rel(w, v) <= tol, key
    return o_tri


@pytest.mark.parametrize("kind,variant,height", list(_cases()))
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_triton_matches_reference_float64(kind, variant, height, one_pass):
    _compare(_maker(kind, LEVEL0[kind][variant], height), torch.float64, one_pass, steps=3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("kind", list(LEVEL0))
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_triton_matches_reference_reduced_precision(kind, dtype, one_pass):
    _compare(_maker(kind, LEVEL0[kind][0], 1), dtype, one_pass)


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_odd_sizes_and_per_tensor_lr(one_pass):
    from hyperfused.ops.triton import hyper
    hyper.configure(block=4096 if DEV == "cpu" else 1024, chunk=16384 if DEV == "cpu" else 8192)
    _compare(_maker("adam", dict(per_tensor=True), 1), torch.float32, one_pass, steps=3, sizes=ODD)


@pytest.mark.parametrize("make", list(NESTEROV_DAMPENED_TOWERS.values()), ids=list(NESTEROV_DAMPENED_TOWERS))
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_triton_tower_runs_nesterov_and_dampened_levels(make, one_pass, monkeypatch):
    """SGD with Nesterov's momentum or dampening as a level above level 0 runs in the Triton tower kernel (not the
    Python tower): trajectory, hyperparameters and the levels' state (step counts included) are the reference's."""
    from hyperfused.ops.triton import tower
    calls = []
    real = tower.plan
    monkeypatch.setattr(tower, "plan", lambda *a, **k: calls.append(1) or real(*a, **k))
    o_tri = _compare(make, torch.float64, one_pass, steps=4)
    assert len(calls) == 4
    _, o_ref = _run(make, torch.float64, "reference", 4, one_pass)
    assert_tower_states_equal(o_tri, o_ref, 4)


def test_more_than_200_tensors_in_one_launch():
    from hyperfused.ops.triton import hyper
    sizes = [((i * 37) % 1500 + 1,) for i in range(205)]
    make = _maker("sgd", {"momentum": 0.9}, 1)
    p_ref, o_ref = _run(make, torch.float32, "reference", 2, False, sizes)
    before = hyper.LAUNCHES["count"]
    p_tri, o_tri = _run(make, torch.float32, "triton", 2, False, sizes)
    # per step: pass A (reduce + finish), the tower (plan + commit) and pass B, whatever the number of tensors
    assert hyper.LAUNCHES["count"] - before == 2 * 5
    for a, b in zip(p_tri, p_ref):
        assert _rel(a, b) <= 1e-5
    assert o_tri.hyperparameters()["lr"] == pytest.approx(o_ref.hyperparameters()["lr"], rel=1e-5)


def test_launch_count_one_pass():
    from hyperfused.ops.triton import hyper
    sizes = [(5,)] * 201
    params = _params(torch.float32, sizes)
    opt = hf.Adam(params, lr=0.01, hyper=hf.SGD(lr=1e-6), backend="triton", one_pass=True)
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    before = hyper.LAUNCHES["count"]
    opt.step()
    # the non-finite read (reduce + finish), pass B with its sums (update + finish), the tower (plan + commit)
    assert hyper.LAUNCHES["count"] - before == 6


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_bitwise_deterministic(one_pass):
    make = _maker("adam", {}, 2)
    runs = [_run(make, torch.float32, "triton", 3, one_pass, SMALL) for _ in range(2)]
    for a, b in zip(runs[0][0], runs[1][0]):
        assert torch.equal(a, b)
    assert runs[0][1].hyperparameters() == runs[1][1].hyperparameters()


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_finite_gradient_skips_the_step(one_pass, dtype):
    params = _params(dtype, SMALL)
    opt = hf.Adam(params, lr=0.01, hyper=hf.Adam(lr=1e-3, hyper=hf.SGD(lr=1e-4)), backend="triton",
                  one_pass=one_pass)
    for t in range(2):
        for p, g in zip(params, _grads(params, t)):
            p.grad = g
        opt.step()
    before = ([p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()["state"]),
              [lv.hyperparameters() for lv in opt.levels])
    for p, g in zip(params, _grads(params, 2)):
        p.grad = g
    params[3].grad[4000] = float("inf")
    opt.step()
    assert opt.skipped_steps == 1
    for a, b in zip(params, before[0]):
        assert torch.equal(a, b)
    after = copy.deepcopy(opt.state_dict()["state"])
    for key in before[1]:
        if key == "hyperfused":
            continue
        for name, v in before[1][key].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, after[key][name]), (key, name)
    assert [lv.hyperparameters() for lv in opt.levels] == before[2]


class _NoDeviceToHost:
    """Raises when code in the hyperfused package reads a tensor's value on the host (item, float, int,
    bool, tolist, cpu, numpy): what would be a device-to-host transfer on CUDA. Calls from elsewhere (the
    Triton interpreter converting its arguments, torch internals) pass."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__")

    def __init__(self):
        self.root = os.path.dirname(hf.__file__)
        self.saved = {}
        self.hits = []

    def __enter__(self):
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)
            self.saved[name] = orig

            def trap(t, *a, _orig=orig, _name=name, **k):
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(self.root):
                    self.hits.append(f"{_name} from {caller}:{sys._getframe(1).f_lineno}")
                    raise AssertionError(f"device-to-host read {_name} in hyperfused code: {self.hits[-1]}")
                return _orig(t, *a, **k)
            setattr(torch.Tensor, name, trap)
        return self

    def __exit__(self, *exc):
        for name, orig in self.saved.items():
            setattr(torch.Tensor, name, orig)


@pytest.mark.parametrize("make", [
    lambda p, o: hf.Adam(p, lr=0.01, hyper=hf.SGD(lr=1e-6), backend="triton", one_pass=o),
    lambda p, o: hf.SGD(p, lr=0.05, momentum=0.9, per_tensor=True, hyper=hf.Adam(lr=1e-4, hyper=hf.SGD(lr=1e-6)),
                        backend="triton", one_pass=o),
    lambda p, o: hf.RMSprop(p, lr=0.01, hyper=hf.Adagrad(lr=1e-5), backend="triton", one_pass=o),
], ids=["adam/sgd", "sgd-per-tensor/adam/sgd", "rmsprop/adagrad"])
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_step_reads_nothing_back_to_the_host(make, one_pass):
    params = _params(torch.float32, SMALL)
    opt = make(params, one_pass)
    for t in range(3):
        for p, g in zip(params, _grads(params, t)):
            p.grad = g
        with _NoDeviceToHost() as trap:
            opt.step()
        assert not trap.hits
    # the trap does fire on hyperfused's own reads (it is not a test that cannot fail)
    with _NoDeviceToHost(), pytest.raises(AssertionError, match="device-to-host"):
        opt.hyperparameters()


def test_trap_catches_a_host_read_inside_step(monkeypatch):
    from hyperfused.ops import fused
    params = _params(torch.float32, SMALL)
    opt = hf.Adam(params, lr=0.01, hyper=hf.SGD(lr=1e-6), backend="triton")
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    # a version of _deltas that reads a value on the host, compiled as code of hyperfused/ops/fused.py
    ns = {"orig": fused._deltas}
    exec(compile("def _deltas(*a):\n    float(a[3][0, 0])\n    return orig(*a)\n", fused.__file__, "exec"), ns)
    monkeypatch.setattr(fused, "_deltas", ns["_deltas"])
    with _NoDeviceToHost(), pytest.raises(AssertionError, match="device-to-host read __float__"):
        opt.step()


@pytest.mark.skipif(importlib.util.find_spec("gradient_descent_the_ultimate_optimizer") is None,
                    reason="the paper's package is not installed")
@pytest.mark.parametrize("tower", [
    [("adam", dict(lr=0.01)), ("sgd", dict(lr=1e-4))],
    [("sgd", dict(lr=0.05, momentum=0.5)), ("adam", dict(lr=1e-4)), ("sgd", dict(lr=1e-5))],
    [("rmsprop", dict(lr=0.01)), ("sgd", dict(lr=1e-4))],
    [("adagrad", dict(lr=0.05)), ("sgd", dict(lr=1e-4))],
    [("sgd_per", dict(lr=0.05)), ("sgd", dict(lr=1e-4))],
], ids=["adam/sgd", "sgd(m)/adam/sgd", "rmsprop/sgd", "adagrad/sgd", "sgd-per/sgd"])
def test_triton_matches_the_papers_package_float32(tower):
    if DEV != "cpu":
        pytest.skip("the paper's package runs on CPU tensors")
    from towers import rel_err, run_both
    ref_w, our_w, ref_lv, our_lv, opt = run_both(tower, "mlp", steps=10, dtype=torch.float32, backend="triton")
    assert opt._group_backend(opt.param_groups[0]) == "triton"
    for a, b in zip(our_w, ref_w):
        assert rel_err(a, b) <= 1e-4
    for mine, theirs in zip(our_lv, ref_lv):
        for name, v in theirs.items():
            assert rel_err(mine[name], v) <= 1e-4, name


def test_triton_on_cpu_tensors_without_the_interpreter_is_refused():
    code = ("import torch, hyperfused as hf\n"
            "p = torch.nn.Parameter(torch.randn(3))\n"
            "try:\n"
            "    opt = hf.Adam([p], hyper=hf.SGD(lr=1e-5), backend='triton'); p.grad = torch.randn(3); opt.step()\n"
            "except ValueError as e:\n"
            "    print('REFUSED', e)\n")
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "REFUSED" in out.stdout and "TRITON_INTERPRET=1" in out.stdout, out.stdout + out.stderr


def test_every_kernel_launch_compiles_for_a_gpu_target():
    """The interpreter never runs Triton's code generator: tests/triton_compile_check.py records the launches of
    steps of several towers (float32 and bfloat16, exact and one-pass) and compiles each for sm_90 with the
    installed Triton, no GPU needed. The tower kernels once passed every interpreted test and failed to compile
    on an H200 (constants assigned in an unrolled loop)."""
    if not ops.triton_available():
        pytest.skip("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "triton_compile_check.py")
    out = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert " of " in out.stdout and "FAIL" not in out.stdout


def _bf16_store_kernel():
    """A kernel storing float32 values as bfloat16 through the update's _to_storage (defined here, at module
    level, because Triton resolves a kernel's names among its module's globals)."""
    global _to_storage
    import triton
    import triton.language as tl
    from hyperfused.ops.triton.hyper import _to_storage

    @triton.jit
    def k(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        m = offs < n
        tl.store(dst + offs, _to_storage(tl.load(src + offs, mask=m, other=0.0), tl.bfloat16), mask=m)
    return k


def test_launch_checks_take_whole_lists_and_still_name_the_offending_tensor():
    """The wrappers check the tensors a property at a time over whole lists (the step's host cost at 1000 tensors);
    a list that does not fit goes through the per-tensor loop, whose error names the tensor and the problem."""
    from hyperfused.ops.triton import hyper
    n = 5
    gs = [torch.randn(3, 4) for _ in range(n)]
    ps = [torch.randn(3, 4) for _ in range(n)]
    s0 = [torch.zeros(3, 4) for _ in range(n)]
    scal = torch.zeros(n, hyper.TABLE_COLS, dtype=torch.float64)
    assert hyper._lists_fit(gs, ps, s0, [], [], torch.float32)      # the usual call: no per-tensor loop
    hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    bad = [
        ("param dtype", dict(ps=ps[:2] + [ps[2].double()] + ps[3:]), "parameter 2 must have the gradient's"),
        ("param shape", dict(ps=ps[:4] + [torch.randn(4, 3)]), "parameter 4 must have the gradient's"),
        ("state stride", dict(s0=[s0[0].t().contiguous().t()] + s0[1:]), "state tensor 0 must have"),
        ("state dtype", dict(s0=s0[:1] + [s0[1].double()] + s0[2:]), "state tensor 1 must have"),
        ("state device", dict(s0=s0[:3] + [torch.zeros(3, 4, device="meta")] + s0[4:]), "state tensor 3 must"),
        ("grad dtype", dict(gs=gs[:1] + [gs[1].half()] + gs[2:]), "share one dtype"),
        ("grad int", dict(gs=[g.int() for g in gs]), "gradient 0 has dtype torch.int32"),
    ]
    for what, kw, msg in bad:
        args = dict(gs=gs, ps=ps, s0=s0)
        args.update(kw)
        assert not hyper._lists_fit(args["gs"], args["ps"], args["s0"], [], [], torch.float32), what
        with pytest.raises((ValueError, TypeError), match=msg):
            hyper._check("op", args["gs"], args["ps"], args["s0"], [], [], scal, torch.float32)
    # a dense gradient that is not contiguous (with parameters laid out alike) is accepted by the loop
    t = [torch.randn(4, 3).t() for _ in range(n)]
    assert not hyper._lists_fit(t, t, [], [], [], torch.float32)
    hyper._check("op", t, t, [], [], [], scal, torch.float32)


def test_launch_checks_of_unchanged_parameters_and_state_are_kept_but_see_every_change():
    """Parameters and state found to fit are not checked again while they are the same tensors at the same
    addresses; a tensor given new storage in place (``p.data = ...``, as ``module.double()`` does), one replaced in
    its list, or gradients of other sizes are checked again, and refused when they do not fit."""
    from hyperfused.ops.triton import hyper
    n = 4
    gs = [torch.randn(6) for _ in range(n)]
    ps = [torch.nn.Parameter(torch.randn(6)) for _ in range(n)]
    s0 = [torch.zeros(6) for _ in range(n)]
    scal = torch.zeros(n, hyper.TABLE_COLS, dtype=torch.float64)
    hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    gs = [torch.randn(6) for _ in range(n)]                 # the next step's gradients: the rest is kept
    assert hyper._lists_fit(gs, ps, s0, [], [], torch.float32)
    ps[1].data = ps[1].data.double()                        # the same Parameter, new storage of another dtype
    with pytest.raises(ValueError, match="parameter 1 must have the gradient's"):
        hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    ps[1].data = ps[1].data.float()
    hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    s0[2] = torch.zeros(7)                                  # a state tensor replaced in its list
    with pytest.raises(ValueError, match="state tensor 2 must have"):
        hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    s0[2] = torch.zeros(6)
    hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    kept = s0[3]
    s0[3] = kept.view(torch.int32)                          # another tensor at the same address
    with pytest.raises(ValueError, match="state tensor 3 must have"):
        hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    s0[3] = kept
    hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    s0[0].unsqueeze_(0)                                     # the layout changed in place (same object and address)
    with pytest.raises(ValueError, match="state tensor 0 must have"):
        hyper._check("op", gs, ps, s0, [], [], scal, torch.float32)
    s0[0].squeeze_(0)
    with pytest.raises(ValueError, match="parameter 0 must have"):   # gradients of another size
        hyper._check("op", [torch.randn(5) for _ in range(n)], ps, s0, [], [], scal, torch.float32)


def test_bfloat16_rounding_keeps_nan_a_nan_and_matches_torch():
    """_to_storage rounds float32 to bfloat16 on the bits (nearest even): every NaN payload stores as torch's NaN
    (0x7FC0; adding the rounding bias to some payloads carried into the sign, giving -0.0, or wrapped to +0.0), and
    finite values, infinities and round-to-even ties as torch's conversion."""
    k = _bf16_store_kernel()
    bits = torch.tensor([0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FFF8000,   # NaNs
                         0x7F800000, 0xFF800000, 0x3F808000, 0x3F818000, 0x3F80C000, 0x00000001, 0x80000000,
                         0x7F7FFFFF], dtype=torch.int64).to(torch.int32)      # inf, -inf, ties, tiny, -0, max
    src = bits.view(torch.float32).to(DEV)
    dst = torch.empty(len(bits), dtype=torch.bfloat16, device=DEV)
    k[(1,)](src, dst, len(bits), BLOCK=16)
    got = dst.cpu().view(torch.int16).to(torch.int64) & 0xFFFF
    want = src.cpu().to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    nan = torch.isnan(src.cpu())
    assert torch.isnan(dst.cpu().float()[nan]).all()
    assert (got[nan] == 0x7FC0).all(), [hex(v) for v in got[nan].tolist()]
    assert torch.equal(got[~nan], want[~nan]), ([hex(v) for v in got.tolist()], [hex(v) for v in want.tolist()])


def test_main_loops_use_16_byte_vector_accesses_on_aligned_tensors():
    """The passes' whole tiles run with a uniform mask, so Triton vectorises them: compiled for sm_90 (no GPU
    needed), every array the update and pass A stream is read (and written) with ld/st.global.v4 at least once.
    With the chunk's end in every tile's mask (its divisibility unknown) they compiled to one-element accesses
    only."""
    if not ops.triton_available():
        pytest.skip("triton is not installed")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "triton_compile_check.py")
    out = subprocess.run([sys.executable, script, "--vector-loads"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    import json
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(report) == 6
    for label, reads, writes, acc in report:
        assert acc.get("ld.v4", 0) >= reads, f"{label}: {acc}"
        assert acc.get("st.v4", 0) >= writes, f"{label}: {acc}"


def test_no_host_to_device_copy_while_a_cuda_graph_is_captured(monkeypatch):
    """The launch tables (chunk map, pointer table, constants) are copied from the host once per layout and
    cached. During CUDA graph capture a cached table is used as it is; a new one is refused with the remedy (a
    pageable copy from host memory would fail inside CUDA). Simulated on CPU: torch is told a capture is on."""
    from hyperfused.ops.triton import hyper
    sizes = (5, 70001)
    hyper._MAPS.clear()
    hyper._PTRS.clear()
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    # cached before the capture: no copy, no refusal
    key = ("cuda", sizes, hyper.CONFIG["CHUNK"])
    hyper._MAPS[key] = cached = tuple(torch.zeros(1) for _ in range(4))
    assert hyper._chunk_map("cuda", sizes) is cached
    # not cached: refused, naming the warm-up
    with pytest.raises(RuntimeError, match="CUDA graph is being captured.*eager step"):
        hyper._chunk_map("cuda", (6, 7))
    with pytest.raises(RuntimeError, match="pointer table.*CUDA graph"):
        hyper._pointer_table("cuda", ([torch.zeros(3)],), 1)
    with pytest.raises(RuntimeError, match="CUDA graph"):
        hyper._eps_tensor((1.2345e-7, 0.0), "cuda")
    # CPU tables (the interpreter) never take the CUDA route
    assert hyper._device_table([1, 2], torch.int64, "cpu").tolist() == [1, 2]
    hyper._MAPS.clear()
