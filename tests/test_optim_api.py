"""The public API of the hypergradient optimizers: names, defaults, errors, faults, checkpoints, memory."""
import copy
import io
import math

import pytest
import torch
import torch.nn as nn

import hyperfused as hf
from hyperfused.kinds import TABLE_COLS


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)


def _data(n, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g).to(dtype), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def _train(model, opt, data):
    for x, y in data:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _snapshot(model, opt):
    return _snapshot_params(model.parameters(), opt)


def _snapshot_params(params, opt):
    """Everything a step could change, as cloned tensors (weights, every level's values and state)."""
    weights = [p.detach().clone() for p in params]
    state = copy.deepcopy(opt.state_dict()["state"])
    state[0]["hyperfused"].pop("skipped_steps")      # the one thing a skipped step does change
    return weights, state


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


# ------------------------------------------------------------------------------------------- the API
@pytest.mark.parametrize("name", ["SGD", "Adam", "RMSprop", "Adagrad"])
def test_constructor_defaults_and_positions_are_torchs(name):
    """Every argument hyperfused shares with torch's optimizer has torch's default, and the positional ones
    sit where torch has them (torch.optim's own signature is the oracle)."""
    import inspect
    ours = list(inspect.signature(getattr(hf, name).__init__).parameters.values())
    theirs = {p.name: p for p in inspect.signature(getattr(torch.optim, name).__init__).parameters.values()}
    positional = [p.name for p in ours if p.kind == p.POSITIONAL_OR_KEYWORD]
    torch_positional = [n for n, p in theirs.items() if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == torch_positional[:len(positional)]
    shared = [p for p in ours if p.name in theirs and p.name not in ("self", "params")]
    assert len(shared) >= 2
    for p in shared:
        assert p.default == theirs[p.name].default, (name, p.name)
    assert hf.Adam().hyperparameters() == {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999}


def test_tower_structure_and_readout():
    m = _model()
    top = hf.SGD(lr=0.01)
    mid = hf.SGD(lr=0.01, hyper=top)
    opt = hf.SGD(m.parameters(), lr=0.01, momentum=0.9, hyper=mid)
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.hyper is mid and mid.hyper is top and top.hyper is None
    assert opt.height == 2 and opt.levels == [opt, mid, top]
    _train(m, opt, _data(5))
    hp = opt.hyperparameters()
    assert set(hp) == {"lr", "momentum"}
    assert hp["lr"] != 0.01 and hp["momentum"] != 0.9           # both learned by default
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    assert float(opt.param_groups[0]["lr"]) == hp["lr"]
    assert mid.hyperparameters()["lr"] != 0.01                     # the middle level learns its lr
    assert top.hyperparameters() == {"lr": pytest.approx(0.01, rel=1e-7), "momentum": 0.0}  # fixed


def test_learn_selects_what_is_learned():
    m = _model()
    opt = hf.Adam(m.parameters(), lr=1e-2, learn=("lr",), hyper=hf.SGD(lr=1e-4))
    _train(m, opt, _data(5))
    hp = opt.hyperparameters()
    assert hp["lr"] != 1e-2
    assert hp["beta1"] == pytest.approx(0.9, rel=1e-7) and hp["beta2"] == pytest.approx(0.999, rel=1e-7)
    m = _model()
    opt = hf.Adam(m.parameters(), lr=1e-2, learn="beta1", hyper=hf.SGD(lr=1e-2))
    _train(m, opt, _data(5))
    hp = opt.hyperparameters()
    assert hp["lr"] == pytest.approx(1e-2, rel=1e-7) and hp["beta1"] != pytest.approx(0.9, rel=1e-9)


def test_without_a_level_above_nothing_is_learned():
    m = _model()
    opt = hf.Adam(m.parameters(), lr=1e-2)
    _train(m, opt, _data(3))
    assert opt.hyperparameters() == {"lr": pytest.approx(1e-2), "beta1": pytest.approx(0.9),
                                     "beta2": pytest.approx(0.999)}
    assert opt.hyper is None and opt.height == 0


def test_per_tensor_lr():
    m = _model()
    opt = hf.SGD(m.parameters(), lr=0.1, per_tensor=True, hyper=hf.SGD(lr=0.01))
    _train(m, opt, _data(5))
    lrs = opt.hyperparameters()["lr"]
    assert isinstance(lrs, list) and len(lrs) == 4 and len(set(lrs)) == 4
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(sum(lrs) / 4, rel=1e-6)
    for cls in (hf.Adam, hf.RMSprop, hf.Adagrad):   # every kind supports it
        m = _model()
        o = cls(m.parameters(), per_tensor=True, hyper=hf.SGD(lr=1e-4))
        _train(m, o, _data(3))
        assert len(o.hyperparameters()["lr"]) == 4


def test_any_kind_at_any_level():
    """Every kind under every kind (SGD on top): both lower levels learn their lr (the smallest relative change
    measured in 3 steps is 1e-5), and the compiled kernels' run agrees with the reference backend's."""
    kinds = [hf.SGD, hf.Adam, hf.RMSprop, hf.Adagrad]
    for bottom in kinds:
        for above in kinds:
            runs = []
            for backend in ("auto", "reference"):
                m = _model()
                # Adagrad divides by the root of its summed squares: from torch's G_0 = 0 its first steps are
                # +-lr whatever the gradient's size, and Adam's beta hypergradients at t = 1 are round-off (0 in
                # exact arithmetic), so two backends summing in different orders would step apart by design
                kw = dict(initial_accumulator_value=0.1) if above is hf.Adagrad else {}
                opt = bottom(m.parameters(), hyper=above(lr=1e-4, hyper=hf.SGD(lr=1e-5), **kw), backend=backend)
                _train(m, opt, _data(3))
                runs.append((m, opt))
            (m, opt), (m_ref, opt_ref) = runs
            name = f"{bottom.__name__}/{above.__name__}"
            assert opt.hyperparameters()["lr"] != pytest.approx(bottom().hyperparameters()["lr"], rel=1e-6), name
            assert opt.hyper.hyperparameters()["lr"] != pytest.approx(1e-4, rel=1e-6), name
            for lv, lv_ref in zip(opt.levels, opt_ref.levels):
                assert lv.hyperparameters()["lr"] == pytest.approx(lv_ref.hyperparameters()["lr"], rel=1e-6), name
            for p, q in zip(m.parameters(), m_ref.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)


def test_step_returns_the_closure_loss():
    m = _model()
    opt = hf.Adam(m.parameters(), hyper=hf.SGD(lr=1e-5))
    x, y = _data(1)[0]

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        return loss

    want = float(nn.functional.cross_entropy(m(x), y))
    before = [p.detach().clone() for p in m.parameters()]
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and float(loss) == want
    assert all(not torch.equal(p, w) for p, w in zip(m.parameters(), before))   # stepped on the closure's gradients
    assert opt.step() is None


def test_lr_set_by_the_user_is_adopted():
    m = _model()
    opt = hf.Adam(m.parameters(), lr=1e-3, hyper=hf.SGD(lr=1e-5))
    _train(m, opt, _data(2))
    opt.param_groups[0]["lr"] = 0.05            # what an LR scheduler does
    assert opt.hyperparameters()["lr"] == pytest.approx(0.05)
    _train(m, opt, _data(1))
    assert opt.hyperparameters()["lr"] == pytest.approx(0.05, rel=1e-2)


def test_param_groups_learn_their_own_hyperparameters():
    """Two groups in one optimizer behave exactly like two optimizers, one per group."""
    m1, m2 = _model(seed=0), _model(seed=0)
    opt = hf.Adam([{"params": m1[0].parameters()}, {"params": m1[2].parameters(), "lr": 0.02}], lr=0.01,
                  hyper=hf.SGD(lr=1e-3))
    a = hf.Adam(m2[0].parameters(), lr=0.01, hyper=hf.SGD(lr=1e-3))
    b = hf.Adam(m2[2].parameters(), lr=0.02, hyper=hf.SGD(lr=1e-3))
    for x, y in _data(6):
        for mod, opts in ((m1, [opt]), (m2, [a, b])):
            for o in opts:
                o.zero_grad()
            nn.functional.cross_entropy(mod(x), y).backward()
            for o in opts:
                o.step()
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert opt.hyperparameters(0) == a.hyperparameters()
    assert opt.hyperparameters(1) == b.hyperparameters()
    assert opt.hyperparameters(0)["lr"] != opt.hyperparameters(1)["lr"]
    assert opt.hyper.hyperparameters(1) == b.hyper.hyperparameters()


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make,match", [
    (lambda p: hf.SGD(p, lr=-0.1), "lr must be >= 0"),
    (lambda p: hf.Adam(p, lr=-1e-3), "lr must be >= 0"),
    (lambda p: hf.Adam(p, betas=(1.0, 0.999)), r"beta1 .* \[0, 1\)"),
    (lambda p: hf.Adam(p, betas=(0.9, -0.1)), r"beta2 .* \[0, 1\)"),
    (lambda p: hf.Adam(p, betas=(0.0, 0.999), hyper=hf.SGD()), r"learned beta1 .* strictly inside"),
    (lambda p: hf.RMSprop(p, alpha=1.5), r"alpha must lie in \[0, 1\)"),
    (lambda p: hf.RMSprop(p, alpha=0.0, hyper=hf.SGD()), "learned alpha must lie strictly inside"),
    (lambda p: hf.Adam(p, hyper=hf.SGD(), learn=("lr", "gamma")), "unknown name 'gamma'"),
    (lambda p: hf.SGD(p, hyper=hf.SGD(), learn=("momentum",)), "cannot learn momentum that starts at 0"),
    (lambda p: hf.SGD(p, momentum=-0.5), "momentum must be >= 0"),
    (lambda p: hf.Adam(p, backend="gpu"), "unknown backend 'gpu'"),
    (lambda p: hf.Adam(p, learn=("lr",)), "needs a level above"),
    (lambda p: hf.Adam(p, lr=float("nan")), "lr must be finite"),
])
def test_bad_values_are_refused_with_a_clear_message(make, match):
    with pytest.raises(ValueError, match=match):
        make(_model().parameters())


def test_hyper_must_be_a_level_without_params():
    m = _model()
    with pytest.raises(ValueError, match="constructed with params"):
        hf.Adam(m.parameters(), hyper=hf.SGD(m.parameters()))
    with pytest.raises(TypeError, match="hyper= must be a hyperfused optimizer"):
        hf.Adam(m.parameters(), hyper=torch.optim.SGD(m.parameters(), lr=0.1))
    level = hf.SGD(lr=1e-5)
    hf.Adam(m.parameters(), hyper=level)
    with pytest.raises(ValueError, match="already belongs to another tower"):
        hf.Adam(_model().parameters(), hyper=level)
    with pytest.raises(TypeError, match=r"pass the learning rate by keyword, e.g. hf.SGD\(lr=1e-05\)"):
        hf.SGD(1e-5)


def test_unimplemented_backends_say_so():
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        hf.Adam(_model().parameters(), backend="tpu")
    if not hf.ops.cuda_extension_available():
        with pytest.raises(NotImplementedError, match="backend='cuda' needs the CUDA extension"):
            hf.Adam(_model().parameters(), backend="cuda")


def test_auto_picks_the_cpu_kernels_for_cpu_tensors():
    m = _model()
    opt = hf.Adam(m.parameters(), backend="auto", hyper=hf.SGD())
    assert opt._group_backend(opt.param_groups[0]) == "cpu"
    opt = hf.Adam(m.parameters(), backend="reference", hyper=hf.SGD())
    assert opt._group_backend(opt.param_groups[0]) == "reference"


def test_complex_and_integer_parameters_are_refused():
    with pytest.raises(ValueError, match="complex parameters"):
        hf.Adam([torch.zeros(3, dtype=torch.complex64, requires_grad=True)])
    with pytest.raises(TypeError, match="floating-point parameters"):
        hf.SGD([torch.zeros(3, dtype=torch.int64)])


def test_parameters_on_different_devices_in_one_group_are_refused():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(3, device="meta", requires_grad=True)
    with pytest.raises(ValueError, match="different devices"):
        hf.SGD([a, b])


def test_sparse_gradients_are_refused_at_step_time():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = hf.SGD(emb.parameters(), hyper=hf.SGD())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(ValueError, match="sparse gradients"):
        opt.step()
    assert torch.equal(emb.weight, before)


def test_a_level_is_not_an_optimizer_of_its_own():
    for call in ("step", "zero_grad", "state_dict"):
        with pytest.raises(RuntimeError, match="level 0 of a tower"):
            getattr(hf.SGD(lr=0.1), call)()


# ------------------------------------------------------------------------------------------- faults
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("make", [
    lambda p: hf.Adam(p, lr=1e-2, hyper=hf.Adam(lr=1e-4, hyper=hf.SGD(lr=1e-5))),
    lambda p: hf.SGD(p, lr=0.1, momentum=0.9, hyper=hf.RMSprop(lr=1e-4)),
    lambda p: hf.SGD(p, lr=0.1, per_tensor=True, hyper=hf.Adagrad(lr=1e-3)),
])
def test_non_finite_gradient_skips_the_whole_step(make, bad):
    m = _model()
    opt = make(m.parameters())
    data = _data(8)
    _train(m, opt, data[:4])
    before = _snapshot(m, opt)
    hyper_before = [lv.hyperparameters() for lv in opt.levels]
    x, y = data[4]
    opt.zero_grad()
    nn.functional.cross_entropy(m(x), y).backward()
    m[2].weight.grad[0, 0] = bad
    opt.step()
    _assert_same(_snapshot(m, opt), before)
    assert [lv.hyperparameters() for lv in opt.levels] == hyper_before
    assert opt.skipped_steps == 1
    _train(m, opt, data[5:])                     # training goes on, finite
    assert opt.skipped_steps == 1
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert all(math.isfinite(v) for lv in opt.levels for val in lv.hyperparameters().values()
               for v in (val if isinstance(val, list) else [val]))


def test_non_finite_hypergradient_skips_the_step():
    """Finite float32 gradients whose hypergradient overflows: sum(g_t * g_{t-1}) with |g| ~ 1e30."""
    p = torch.nn.Parameter(torch.zeros(4))
    opt = hf.SGD([p], lr=1e-3, hyper=hf.SGD(lr=1e-3))
    p.grad = torch.full((4,), 1e30)
    opt.step()                                       # step 1: no hypergradient yet
    assert opt.skipped_steps == 0
    before = _snapshot_params([p], opt)
    p.grad = torch.full((4,), 1e30)
    opt.step()
    assert opt.skipped_steps == 1
    _assert_same(_snapshot_params([p], opt), before)


def test_parameters_without_gradient_are_left_alone_and_do_not_feed_the_hypergradient():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(3))
    b = torch.nn.Parameter(torch.randn(3))
    opt = hf.SGD([a, b], lr=0.1, per_tensor=True, hyper=hf.SGD(lr=0.5))
    a.grad, b.grad = torch.randn(3), torch.randn(3)
    opt.step()
    opt.step()
    lr_a = opt.hyperparameters()["lr"][0]
    state_a = copy.deepcopy(opt.state[a])
    a_before = a.detach().clone()
    a.grad = None
    b.grad = torch.randn(3)
    opt.step()                                       # a has no gradient: untouched
    assert torch.equal(a, a_before)
    assert torch.equal(opt.state[a]["prev_grad"], state_a["prev_grad"])
    assert opt.hyperparameters()["lr"][0] == lr_a    # its lr got no hypergradient
    a.grad = torch.randn(3)
    opt.step()                                       # a did not move last step: its Jacobian is zero
    assert opt.hyperparameters()["lr"][0] == lr_a
    a.grad = torch.randn(3)
    opt.step()                                       # now it moved: its lr learns again
    assert opt.hyperparameters()["lr"][0] != lr_a


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("make", [
    lambda p: hf.Adam(p, lr=1e-2, hyper=hf.SGD(lr=1e-4, hyper=hf.Adam(lr=1e-3))),
    lambda p: hf.SGD(p, lr=0.1, momentum=0.9, hyper=hf.SGD(lr=1e-3, per_tensor=True)),
    lambda p: hf.RMSprop(p, per_tensor=True, hyper=hf.Adagrad(lr=1e-3)),
    lambda p: hf.Adagrad(p, lr=0.1, hyper=hf.RMSprop(lr=1e-4)),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resume_from_a_checkpoint_is_bitwise_identical(make, dtype):
    check_resume_is_bitwise(make, lambda seed: _model(dtype, seed), _data(20, dtype))


def check_resume_is_bitwise(make, model, data):
    """Train on the first half of `data`, checkpoint through torch.save, train on; a new model (``model(seed)``)
    and optimizer loaded from the checkpoint then train to the same weights and every level's hyperparameters,
    bitwise. The checkpoint dict is not altered by loading; reduced-precision parameters keep float32 state.
    Returns the resumed optimizer."""
    half = len(data) // 2
    m = model(0)
    opt = make(m.parameters())
    _train(m, opt, data[:half])
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, buf)
    _train(m, opt, data[half:])

    buf.seek(0)
    ckpt = torch.load(buf)
    m2 = model(5)
    m2.load_state_dict(ckpt["model"])
    opt2 = make(m2.parameters())
    saved = copy.deepcopy(ckpt["opt"])
    opt2.load_state_dict(ckpt["opt"])
    _assert_same(ckpt["opt"]["state"], saved["state"])     # the caller's dict is not aliased or altered
    dtype = next(m2.parameters()).dtype
    for st in opt2.state.values():                         # reduced-precision params keep float32 state
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() > 0:
                assert v.dtype == (torch.float32 if dtype != torch.float64 else torch.float64), k
    _train(m2, opt2, data[half:])
    for p, q in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert [lv.hyperparameters() for lv in opt.levels] == [lv.hyperparameters() for lv in opt2.levels]
    return opt2


# ------------------------------------------------------------------------------------------- memory
@pytest.mark.parametrize("make,keys", [
    (lambda p: hf.Adam(p, learn=("lr",), hyper=hf.SGD()), {"exp_avg", "exp_avg_sq"}),
    (lambda p: hf.Adam(p, hyper=hf.SGD()), {"exp_avg", "exp_avg_sq", "prev_grad"}),
    (lambda p: hf.SGD(p, hyper=hf.SGD()), {"prev_grad"}),
    (lambda p: hf.SGD(p, momentum=0.9, learn=("lr",), hyper=hf.SGD()), {"momentum_buffer"}),
    (lambda p: hf.SGD(p, momentum=0.9, hyper=hf.SGD()), {"momentum_buffer", "prev_momentum_buffer"}),
    (lambda p: hf.Adagrad(p, hyper=hf.SGD()), {"sum", "prev_grad"}),
    (lambda p: hf.RMSprop(p, hyper=hf.SGD()), {"square_avg", "prev_grad"}),
    (lambda p: hf.Adam(p), {"exp_avg", "exp_avg_sq"}),
])
def test_state_per_element_is_what_the_spec_allows(make, keys):
    m = _model()
    opt = make(m.parameters())
    _train(m, opt, _data(2))
    for p in m.parameters():
        big = {k for k, v in opt.state[p].items() if isinstance(v, torch.Tensor) and v.numel() == p.numel() > 1}
        assert big == keys
        assert all(not v.requires_grad for v in opt.state[p].values() if isinstance(v, torch.Tensor))
        assert p.grad_fn is None


def test_reduced_precision_parameters_keep_float32_state():
    for dtype in (torch.bfloat16, torch.float16):
        m = _model(dtype)
        opt = hf.Adam(m.parameters(), lr=1e-2, hyper=hf.SGD(lr=1e-5))
        _train(m, opt, _data(5, dtype))
        for p in m.parameters():
            assert p.dtype == dtype
            assert opt.state[p]["exp_avg"].dtype == torch.float32
        assert math.isfinite(opt.hyperparameters()["lr"])


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_grad_scaler_protocol(one_pass, backend):
    """torch.amp.GradScaler passes grad_scale and found_inf; training equals unscaled training (the scale is a
    power of two, so unscaling is exact) and an overflowing step is skipped."""
    if backend == "triton" and not hf.ops.triton_available():
        pytest.skip("triton is not installed")
    # the Triton kernels run on CUDA tensors where there is a GPU (CPU tensors only under the interpreter)
    dev = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    data = [(x.to(dev), y.to(dev)) for x, y in _data(6)]
    m1, m2 = _model().to(dev), _model().to(dev)
    o1 = hf.Adam(m1.parameters(), lr=1e-2, hyper=hf.SGD(lr=1e-3), one_pass=one_pass, backend=backend)
    o2 = hf.Adam(m2.parameters(), lr=1e-2, hyper=hf.SGD(lr=1e-3), one_pass=one_pass, backend=backend)
    scaler = torch.amp.GradScaler(dev, init_scale=2.0 ** 10)
    for x, y in data:
        o1.zero_grad()
        nn.functional.cross_entropy(m1(x), y).backward()
        o1.step()
        o2.zero_grad()
        scaler.scale(nn.functional.cross_entropy(m2(x), y)).backward()
        scaler.step(o2)
        scaler.update()
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert o1.hyperparameters() == o2.hyperparameters()
    before = [p.detach().clone() for p in m2.parameters()]
    o2.zero_grad()
    scaler.scale(nn.functional.cross_entropy(m2(data[0][0]), data[0][1])).backward()
    m2[0].weight.grad[0, 0] = float("inf")
    scale = scaler.get_scale()
    scaler.step(o2)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(m2.parameters(), before))
    assert o2.skipped_steps == 1 and scaler.get_scale() < scale


@pytest.mark.parametrize("kernels", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernels_apply_inv_scale_as_they_read(kernels, dtype):
    """The ops' inv_scale argument (GradScaler's 1 / scale): the same sums, update and stored previous gradient
    as with gradients divided first, and the caller's gradients are left scaled."""
    if kernels == "triton":
        if not hf.ops.triton_available():
            pytest.skip("triton is not installed")
        from hyperfused.ops.triton import hyper as k
        dev = "cuda" if torch.cuda.is_available() else "cpu"     # CPU tensors only under the interpreter
    else:
        if not hf.ops.extension_available():
            pytest.skip("the C++ extension is not built")
        k = torch.ops.hyperfused
        dev = "cpu"
    g = torch.Generator().manual_seed(0)
    sizes = [1, 7, 4097]
    grads = [torch.randn(n, generator=g).to(dtype).to(dev) for n in sizes]
    scaled = [(x.float() * 1024).to(dtype) for x in grads]
    kept = [x.clone() for x in scaled]
    inv = torch.tensor([1 / 1024], dtype=torch.float64, device=dev)
    prev = [torch.randn(n, generator=g).to(dev) for n in sizes]
    scal = torch.zeros(len(sizes), TABLE_COLS, dtype=torch.float64, device=dev)
    scal[:, 0] = scal[:, 3] = 0.1
    scal[:, 7] = 1.0
    a = k.hyper_reduce(0, 1, False, [0.0, 0.0], scaled, prev, [], [], scal, inv_scale=inv)
    b = k.hyper_reduce(0, 1, False, [0.0, 0.0], grads, prev, [], [], scal)
    assert torch.equal(a, b)
    ok = torch.ones((), dtype=torch.bool, device=dev)
    pa, pb = [torch.ones(n, dtype=dtype, device=dev) for n in sizes], [torch.ones(n, dtype=dtype, device=dev)
                                                                        for n in sizes]
    sa, sb = [x.clone() for x in prev], [x.clone() for x in prev]
    k.hyper_update(0, 1, False, [0.0, 0.0], pa, scaled, sa, [], [], scal, None, ok, inv_scale=inv)
    k.hyper_update(0, 1, False, [0.0, 0.0], pb, grads, sb, [], [], scal, None, ok)
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert all(torch.equal(x, y) for x, y in zip(sa, sb))          # the previous gradient is stored unscaled
    assert all(torch.equal(x, y) for x, y in zip(scaled, kept))    # the caller's gradients are not touched
    with pytest.raises((ValueError, RuntimeError), match="inv_scale"):
        k.hyper_reduce(0, 1, False, [0.0, 0.0], scaled, prev, [], [], scal, inv_scale=inv.float())
