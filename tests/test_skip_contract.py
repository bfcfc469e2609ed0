"""The skip contract (README, "Skipped steps" and "Mixed precision"), each trigger on its own.

A step is skipped bitwise (weights, every state tensor, every level's hyperparameters) and counted in
``opt.skipped_steps`` when a gradient is not finite, when a hypergradient or a new hyperparameter is not finite
(one-pass mode: the tower stays, the weight update stands), or when GradScaler's ``found_inf`` says so. Each test
here isolates one of these checks so that it alone decides the skip, on every backend that runs on CPU tensors
("triton" under the interpreter) and in exact and one-pass mode: a plain optimizer has no hypergradient, step 1 of
a tower has none yet, and a huge hyper learning rate overflows the new hyperparameters from finite gradients and
finite hypergradients. AGD's own skip is checked last.
"""
import copy

import pytest
import torch

import hyperfused as hf
from test_optim_api import _assert_same, _snapshot_params

NAN, INF = float("nan"), float("inf")
BACKENDS = ["reference", "cpu", "triton"]
MODES = pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])


def _device(backend):
    """The Triton kernels run on CUDA tensors where there is a GPU (on CPU tensors only under the interpreter)."""
    if backend == "triton":
        if not hf.ops.triton_available():
            pytest.skip("triton is not installed")
        return "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "cpu" and not hf.ops.extension_available():
        pytest.skip("the C++ extension is not built")
    return "cpu"


def _params(dev, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(3, 4, generator=g).to(dev)),
            torch.nn.Parameter(torch.randn(5, generator=g).to(dev))]


def _grads(params, t):
    g = torch.Generator().manual_seed(100 + t)
    return [torch.randn(p.shape, generator=g).to(p.device) for p in params]


def _step(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()        # a fresh tensor each step: the cpu backend may keep the last one as its state
    opt.step()


def _everything(params, opt):
    """Weights, every state tensor and every level's hyperparameters (skipped_steps left out)."""
    weights, state = _snapshot_params(params, opt)
    return {"weights": weights, "state": state, "hyper": [lv.hyperparameters() for lv in opt.levels]}


def _tower(opt):
    """Every level's hyperparameters and the state of the levels above level 0. Level 0's "used" values (those
    the last weight update used) are left out: in one-pass mode that update stands on a skipped step."""
    groups = copy.deepcopy(opt.state_dict()["state"][0]["hyperfused"]["groups"])
    for gt in groups.values():
        gt["levels"][0].pop("used", None)
    return groups, [lv.hyperparameters() for lv in opt.levels]


def _all_finite(params):
    return all(torch.isfinite(p).all() for p in params)


# ------------------------------------------------------------------------------ 1. a non-finite gradient alone
PLAIN = {
    "adam": lambda ps, **kw: hf.Adam(ps, lr=1e-2, **kw),
    "sgd": lambda ps, **kw: hf.SGD(ps, lr=0.1, **kw),
    "sgd-momentum": lambda ps, **kw: hf.SGD(ps, lr=0.1, momentum=0.9, **kw),
    "rmsprop": lambda ps, **kw: hf.RMSprop(ps, lr=1e-2, **kw),
    "adagrad": lambda ps, **kw: hf.Adagrad(ps, lr=1e-2, **kw),
}
TOWERS_AT_STEP_1 = {
    "adam/sgd": lambda ps, **kw: hf.Adam(ps, lr=1e-2, hyper=hf.SGD(lr=1e-4), **kw),
    "sgd-momentum/sgd/sgd": lambda ps, **kw: hf.SGD(ps, lr=0.1, momentum=0.9,
                                                     hyper=hf.SGD(lr=1e-3, hyper=hf.SGD(lr=1e-3)), **kw),
}


def _check_non_finite_gradient_skip(make, backend, one_pass, bad_step, bad):
    dev = _device(backend)
    params = _params(dev)
    opt = make(params, backend=backend, one_pass=one_pass)
    opt.init_state()              # state exists before the first step, so a skipped step 1 can be compared too
    for t in range(1, bad_step):
        _step(opt, params, _grads(params, t))
    before = _everything(params, opt)
    grads = _grads(params, bad_step)
    grads[1][2] = bad
    _step(opt, params, grads)
    assert opt.skipped_steps == 1
    _assert_same(_everything(params, opt), before)
    _step(opt, params, _grads(params, bad_step + 1))     # the next finite step is taken
    assert opt.skipped_steps == 1
    assert _all_finite(params) and not torch.equal(params[0], before["weights"][0])


@pytest.mark.parametrize("bad_step, bad", [(1, NAN), (3, -INF)], ids=["step1-nan", "step3-neg-inf"])
@pytest.mark.parametrize("kind", list(PLAIN))
@MODES
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_gradient_skips_a_plain_optimizer_bitwise(backend, one_pass, kind, bad_step, bad):
    """No level above: the gradient check alone decides the skip."""
    _check_non_finite_gradient_skip(PLAIN[kind], backend, one_pass, bad_step, bad)


@pytest.mark.parametrize("index", [0, 1000, 4097], ids=["first", "vector-body", "tail"])
@pytest.mark.parametrize("make", [PLAIN["adam"], TOWERS_AT_STEP_1["adam/sgd"]], ids=["adam", "adam/sgd-step1"])
@MODES
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_gradient_anywhere_in_a_long_tensor_skips(backend, one_pass, make, index):
    """The compiled loops read long tensors a vector at a time and only the last elements one by one: a NaN in the
    vector body must be counted as well as one in the tail (the small tensors above fit in one tail)."""
    dev = _device(backend)
    g = torch.Generator().manual_seed(3)
    params = [torch.nn.Parameter(torch.randn(4099, generator=g).to(dev)),
              torch.nn.Parameter(torch.randn(5, generator=g).to(dev))]
    opt = make(params, backend=backend, one_pass=one_pass)
    opt.init_state()
    before = _everything(params, opt)
    grads = _grads(params, 1)
    grads[0][index] = NAN
    _step(opt, params, grads)
    assert opt.skipped_steps == 1
    _assert_same(_everything(params, opt), before)


@pytest.mark.parametrize("tower", list(TOWERS_AT_STEP_1))
@MODES
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_gradient_at_step_1_skips_a_tower_bitwise(backend, one_pass, tower):
    """At step 1 no tensor has moved yet, so every hypergradient is zero: the gradient check alone decides."""
    _check_non_finite_gradient_skip(TOWERS_AT_STEP_1[tower], backend, one_pass, 1, NAN)


# ------------------------------------------------------------------------------ 2. a non-finite new hyperparameter
# Gradients of 100 t at step t make level 0's hypergradient -sum(g_t * g_{t-1}) = -3.4e5 at step 2 (17 elements),
# and level 1's -delta_0(3) * delta_0(2) = -3.5e11 at step 3: finite, but a hyper lr of 1e36 (1e30) turns the new lr
# below it into +inf in float32 (3e41, 3e41). They change from step to step, so a state written on a skipped step
# would show.
def _overflow_tower(height, huge_at, huge):
    """SGD levels learning each other's lr; level ``huge_at`` has lr ``huge``, the others small ones."""
    def make(ps, **kw):
        level = None
        for k in range(height, 0, -1):
            level = hf.SGD(lr=huge if k == huge_at else 1e-6, hyper=level)
        return hf.SGD(ps, lr=0.01, hyper=level, **kw)
    return make


# (height, level whose lr is huge, its lr, step at which the new hyperparameters overflow). Height 8 (9 levels) is
# taller than the compiled tower ops take (tower.MAX_LEVELS), so the cpu backend runs the Python tower there.
OVERFLOWS = {
    "height1-level0-lr": (1, 1, 1e36, 2),
    "height2-level1-lr": (2, 2, 1e30, 3),
    "height8-level0-lr": (8, 1, 1e36, 2),
}


def _growing_grads(params, t):
    return [torch.full(p.shape, 100.0 * t, device=p.device) for p in params]


def _huge_grads(params, t):
    return [torch.full(p.shape, 1e30, device=p.device) for p in params]


def _check_non_finite_tower_skip(backend, one_pass, make, grads_of, bad_step, twin=None):
    """Finite gradients up to and at ``bad_step``, where the tower's new values are not finite. Exact mode: the whole
    step is skipped bitwise. One-pass mode: every hyperparameter and level above stays bitwise, the step counts as
    skipped, and the weight update stands; ``twin`` (an optimizer that takes that step with the same level-0
    values) gives the weights it must leave."""
    dev = _device(backend)
    params = _params(dev)
    opt = make(params, backend=backend, one_pass=one_pass)
    twin_params = _params(dev)
    twin_opt = twin(twin_params, backend=backend, one_pass=True) if one_pass and twin else None
    for t in range(1, bad_step):
        _step(opt, params, grads_of(params, t))
        if twin_opt:
            _step(twin_opt, twin_params, grads_of(twin_params, t))
    assert opt.skipped_steps == 0 and _all_finite(params)
    before, tower_before = _everything(params, opt), _tower(opt)
    _step(opt, params, grads_of(params, bad_step))
    assert opt.skipped_steps == 1
    if not one_pass:
        _assert_same(_everything(params, opt), before)
        return
    _assert_same(_tower(opt), tower_before)
    assert _all_finite(params) and not torch.equal(params[0], before["weights"][0])
    if twin_opt:
        _step(twin_opt, twin_params, grads_of(twin_params, bad_step))
        assert twin_opt.skipped_steps == 0
        _assert_same([p.detach() for p in params], [p.detach() for p in twin_params])


@pytest.mark.parametrize("case", list(OVERFLOWS))
@MODES
@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_new_hyperparameter_skips_the_step(backend, one_pass, case):
    """Finite gradients and finite hypergradients whose new lr overflows to inf: the new-hyperparameter check alone
    decides the skip."""
    height, huge_at, huge, bad_step = OVERFLOWS[case]
    if backend == "triton" and height > 2:
        pytest.skip("the Triton tower program is one kernel for any height; tall towers only cost interpreter time")
    # the same tower with the huge lr set to 0: its new values stay finite and its weights take the same step
    twin = _overflow_tower(height, huge_at, 0.0)
    _check_non_finite_tower_skip(backend, one_pass, _overflow_tower(height, huge_at, huge), _growing_grads,
                                 bad_step, twin)


@pytest.mark.parametrize("height", [1, 8])
@MODES
@pytest.mark.parametrize("backend", BACKENDS)
def test_overflowing_hypergradient_skips_the_step(backend, one_pass, height):
    """Finite float32 gradients of 1e30: sum(g_t * g_{t-1}) overflows at step 2."""
    if backend == "triton" and height > 2:
        pytest.skip("the Triton tower program is one kernel for any height; tall towers only cost interpreter time")
    # one-pass mode: the weight update at step 2 is plain SGD's with the initial lr
    twin = (lambda ps, **kw: hf.SGD(ps, lr=0.01, **kw))
    _check_non_finite_tower_skip(backend, one_pass, _overflow_tower(height, 1, 1e-3), _huge_grads, 2, twin)


# ------------------------------------------------------------------------------ 3. GradScaler's found_inf alone
SCALE = 2.0 ** 10


def _amp_step(opt, params, grads, found_inf):
    """What torch.amp.GradScaler.step does for an optimizer with _step_supports_amp_scaling: scaled gradients, the
    attributes grad_scale and found_inf (0-dim float32 tensors), step(), then it deletes them. The gradients here
    are finite whatever found_inf says."""
    dev = params[0].device
    for p, g in zip(params, grads):
        p.grad = g * SCALE
    opt.grad_scale = torch.full((), SCALE, dtype=torch.float32, device=dev)
    opt.found_inf = torch.full((), float(found_inf), dtype=torch.float32, device=dev)
    try:
        opt.step()
    finally:
        del opt.grad_scale, opt.found_inf


def _amp_tower(ps, **kw):
    return hf.Adam(ps, lr=1e-2, hyper=hf.SGD(lr=1e-3), **kw)


@MODES
@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_found_inf_alone_skips_the_step(backend, one_pass):
    """found_inf = 1 with finite gradients: the scaler's verdict alone skips the step (one-pass mode included, where
    it replaces the optimizer's own read of the gradients)."""
    dev = _device(backend)
    params = _params(dev)
    opt = _amp_tower(params, backend=backend, one_pass=one_pass)
    for t in (1, 2):              # the tower has moved: this step's hypergradients are not zero
        _step(opt, params, _grads(params, t))
    before = _everything(params, opt)
    _amp_step(opt, params, _grads(params, 3), found_inf=1)
    assert opt.skipped_steps == 1
    _assert_same(_everything(params, opt), before)
    _amp_step(opt, params, _grads(params, 4), found_inf=0)
    assert opt.skipped_steps == 1 and not torch.equal(params[0], before["weights"][0])


@MODES
@pytest.mark.parametrize("backend", BACKENDS)
def test_grad_scaler_without_inf_equals_the_unscaled_step_bitwise(backend, one_pass):
    """A power-of-two scale unscales exactly: weights, state and hyperparameters equal the unscaled run's."""
    dev = _device(backend)
    plain_params, amp_params = _params(dev), _params(dev)
    plain = _amp_tower(plain_params, backend=backend, one_pass=one_pass)
    amp = _amp_tower(amp_params, backend=backend, one_pass=one_pass)
    for t in (1, 2, 3):
        _step(plain, plain_params, _grads(plain_params, t))
        _amp_step(amp, amp_params, _grads(amp_params, t), found_inf=0)
        _assert_same(_everything(amp_params, amp), _everything(plain_params, plain))
    assert amp.skipped_steps == 0


# ------------------------------------------------------------------------------ 4. AGD
def _agd_params(dev):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter((torch.randn(6, 4, generator=g) / 3).to(dev)),
            torch.nn.Parameter((torch.randn(3, 2, 2, 2, generator=g) / 3).to(dev))]


def _agd_uv(opt, params):
    return [{k: opt.state[p][k].clone() for k in ("u", "v")} for p in params]


def _check_agd_skip(backend, norm, bad_step):
    dev = _device(backend)
    params = _agd_params(dev)
    opt = hf.AGD(params, norm=norm, backend=backend)
    for t in range(1, bad_step):
        _step(opt, params, _grads(params, t))
    weights, eta = [p.detach().clone() for p in params], opt.eta.clone()
    uv = _agd_uv(opt, params) if bad_step > 1 and norm == "spectral" else None
    grads = _grads(params, bad_step)
    grads[1][1, 0, 1, 0] = NAN
    _step(opt, params, grads)
    _assert_same([p.detach() for p in params], weights)
    _assert_same(opt.eta, eta)            # eta stays the last taken step's
    assert opt.skipped_steps == 1
    if uv is not None:
        _assert_same(_agd_uv(opt, params), uv)


@pytest.mark.parametrize("bad_step", [1, 2], ids=["step1", "step2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_agd_frobenius_non_finite_gradient_leaves_the_weights(backend, bad_step):
    """A NaN makes a slice's sum of squares NaN: the device flag skips the update (read on the host by the
    reference loop and the C++ kernel, on the device by the Triton and CUDA kernels)."""
    _check_agd_skip(backend, "frobenius", bad_step)


@pytest.mark.parametrize("bad_step", [1, 2], ids=["step1", "step2"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_agd_spectral_non_finite_gradient_leaves_the_weights_and_vectors(backend, bad_step):
    _check_agd_skip(backend, "spectral", bad_step)
