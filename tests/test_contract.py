"""The torch.optim contract, with torch.optim as the oracle: LR schedulers, param_groups edits, add_param_group,
load_state_dict, copies (deepcopy, pickle, torch.distributed.checkpoint's helpers), on every backend that runs
on CPU tensors here. A plain hyperfused optimizer (no level above) must behave exactly as its torch
counterpart under each of these; what torch has no counterpart for (a tower) has its own invariant.
"""
import copy
import pickle
import random

import pytest
import torch
from torch.optim import lr_scheduler as S

import hyperfused as hf
from hyperfused import ops


def _backends():
    out = ["reference"]
    if ops.extension_available():
        out.append("cpu")
    return out


BACKENDS = pytest.mark.parametrize("backend", _backends())
# where the kernels decide (the skip flag, in-place state), the Triton kernels too (under the interpreter on CPU)
# (these tests use CPU tensors: with a GPU present the Triton kernels run on CUDA tensors in their own tests)
_INTERPRETED = ops.triton_available() and not torch.cuda.is_available()
KERNEL_BACKENDS = pytest.mark.parametrize("backend", _backends() + (["triton"] if _INTERPRETED else []))
KINDS = {"sgd": (hf.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
         "adam": (hf.Adam, torch.optim.Adam, dict(lr=0.01)),
         "rmsprop": (hf.RMSprop, torch.optim.RMSprop, dict(lr=0.01)),
         "adagrad": (hf.Adagrad, torch.optim.Adagrad, dict(lr=0.1))}


def _params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=dtype)) for s in [(3, 4), (5,), (70,)]]


def _grad(params, t):
    g = torch.Generator().manual_seed(1000 + t)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1


def _state_of(opt):
    """Everything an optimizer holds, as plain nested data (for bitwise comparisons)."""
    return copy.deepcopy(opt.state_dict())


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


# --------------------------------------------------------------------------------------------- 1. schedulers
SCHEDULERS = {
    "step": lambda o: S.StepLR(o, step_size=3, gamma=0.5),
    "exponential": lambda o: S.ExponentialLR(o, gamma=0.9),
    "cosine": lambda o: S.CosineAnnealingLR(o, T_max=7),
    "lambda-zero": lambda o: S.LambdaLR(o, lambda e: 0.0 if e >= 4 else 1.0),
    # momentum cycling where both have it (hf.RMSprop has no momentum yet: torch's would cycle one)
    "onecycle": lambda o: S.OneCycleLR(o, max_lr=0.05, total_steps=14,
                                       cycle_momentum=isinstance(o, (torch.optim.SGD, hf.SGD, torch.optim.Adam, hf.Adam))),
    "cyclic": lambda o: S.CyclicLR(o, base_lr=0.001, max_lr=0.05, step_size_up=3,
                                   cycle_momentum="momentum" in o.defaults and o.defaults["momentum"] > 0),
    "sequential": lambda o: S.SequentialLR(o, [S.LinearLR(o, start_factor=0.1, total_iters=4),
                                               S.ExponentialLR(o, gamma=0.8)], milestones=[4]),
    "plateau": lambda o: S.ReduceLROnPlateau(o, patience=1, factor=0.3),
}


@BACKENDS
@pytest.mark.parametrize("sched", list(SCHEDULERS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_scheduler_drives_a_plain_optimizer_as_torchs(kind, sched, backend):
    ours_cls, torch_cls, kw = KINDS[kind]
    results = []
    for make in (lambda ps: torch_cls(ps, **kw), lambda ps: ours_cls(ps, backend=backend, **kw)):
        params = _params()
        opt = make(params)
        sch = SCHEDULERS[sched](opt)
        lrs = []
        for t in range(14):
            _grad(params, t)
            opt.step()
            if sched == "plateau":
                sch.step(1.0)                     # a loss that never improves: the lr drops
            else:
                sch.step()
            lrs.append(float(opt.param_groups[0]["lr"]))
        results.append((params, lrs, {k: v for k, v in opt.param_groups[0].items()
                                      if k in ("momentum", "betas")}))
    (p_t, lr_t, h_t), (p_h, lr_h, h_h) = results
    assert lr_h == pytest.approx(lr_t, rel=1e-12, abs=1e-15)
    assert len(set(lr_t)) > 1                      # the schedule did change the lr
    for a, b in zip(p_h, p_t):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@BACKENDS
def test_a_tower_restarts_its_learned_lr_from_the_schedulers_value(backend):
    """In place (a scheduler's fill_) or by assignment: the learned lr starts again from the value set."""
    runs = []
    for how in ("scheduler", "assign"):
        params = _params()
        opt = hf.Adam(params, lr=0.01, hyper=hf.SGD(lr=1e-3), backend=backend)
        sch = S.LambdaLR(opt, lambda e: 0.5 if e >= 1 else 1.0) if how == "scheduler" else None
        for t in range(6):
            _grad(params, t)
            opt.step()
            if t == 2:                           # once (LambdaLR would set 0.005 again at every later step)
                if sch is not None:
                    sch.step()
                else:
                    opt.param_groups[0]["lr"] = 0.005
                assert opt.hyperparameters()["lr"] == pytest.approx(0.005, rel=1e-12)
        runs.append((params, opt.hyperparameters()))
    (pa, ha), (pb, hb) = runs
    assert ha["lr"] != pytest.approx(0.005, rel=1e-9)        # it went on learning from there
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
    assert ha == hb


# ------------------------------------------------------------------------------------ 2. param_groups edits
EDITS = {
    "sgd": [("momentum", 0.5), ("momentum", 0.0), ("lr", 0.02)],
    "sgd-off": [("momentum", 0.7)],          # switched on mid-run: a buffer is made as at a first step
    "adam": [("betas", (0.5, 0.9)), ("eps", 1e-3), ("lr", 0.002)],
    "rmsprop": [("alpha", 0.5), ("eps", 1e-4)],
    "adagrad": [("eps", 1e-3), ("lr", 0.5)],
}


@KERNEL_BACKENDS
@pytest.mark.parametrize("case", list(EDITS))
def test_param_group_edits_are_honoured_from_the_next_step_as_torch(case, backend):
    kind = case.split("-")[0]
    ours_cls, torch_cls, kw = KINDS[kind]
    kw = dict(kw, momentum=0.0) if case == "sgd-off" else kw
    out = []
    for make in (lambda ps: torch_cls(ps, **kw), lambda ps: ours_cls(ps, backend=backend, **kw)):
        params = _params()
        opt = make(params)
        for t in range(12):
            if t % 3 == 2:
                name, value = EDITS[case][(t // 3) % len(EDITS[case])]
                opt.param_groups[0][name] = value
            _grad(params, t)
            opt.step()
        out.append(params)
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


@BACKENDS
def test_edits_that_would_change_the_towers_shape_are_refused_and_change_nothing(backend):
    params = _params()
    opt = hf.Adam(params, hyper=hf.SGD(lr=1e-4), backend=backend)
    _grad(params, 0)
    opt.step()
    assert opt.param_groups[0]["learn"] == ("lr", "beta1", "beta2")     # what it learns, shown
    before = (_state_of(opt), [p.detach().clone() for p in params])
    for key, value in (("learn", ("lr",)), ("per_tensor", True)):
        old = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        with pytest.raises(ValueError, match=key):
            opt.step()
        opt.param_groups[0][key] = old
    opt.param_groups[0]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match="beta2"):
        opt.step()
    assert _same(_state_of(opt)["state"], before[0]["state"])
    assert all(torch.equal(a, b) for a, b in zip(params, before[1]))
    opt.param_groups[0]["betas"] = (0.9, 0.999)
    opt.step()                                   # usable again once the value is good


@KERNEL_BACKENDS
def test_a_bad_tensor_lr_never_reaches_the_weights(backend):
    params = _params()
    opt = hf.SGD(params, lr=0.1, backend=backend)
    _grad(params, 0)
    opt.step()
    before = [p.detach().clone() for p in params]
    for bad in (float("nan"), -1.0, float("inf")):
        opt.param_groups[0]["lr"].fill_(bad)     # as a scheduler would
        opt.step()
        assert all(torch.equal(a, b) for a, b in zip(params, before)), bad
    assert opt.skipped_steps == 3
    with pytest.raises(ValueError, match="lr"):
        opt.param_groups[0]["lr"] = float("nan")
        opt.step()
    opt.param_groups[0]["lr"] = 0.1
    opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(params, before))


# -------------------------------------------------------------------------------------- 3. add_param_group
@BACKENDS
def test_a_refused_param_group_leaves_the_optimizer_as_it_was(backend):
    params = _params()
    extra = torch.nn.Parameter(torch.randn(6, dtype=torch.float64))
    opt = hf.Adam(params[:2], hyper=hf.SGD(lr=1e-4), backend=backend)
    _grad(params, 0)
    opt.step()
    before = _state_of(opt)
    bad = [dict(params=[extra], lr=-1.0), dict(params=[extra], betas=(0.9, 1.0)),
           dict(params=[torch.nn.Parameter(torch.zeros(2, dtype=torch.complex64))]),
           dict(params=[extra], learn=("momentum",))]
    for group in bad:
        with pytest.raises((ValueError, TypeError)):
            opt.add_param_group(group)
        assert len(opt.param_groups) == 1
        assert _same(_state_of(opt), before)
    opt.add_param_group(dict(params=[extra], lr=1e-3))       # a retry with good values works
    for t in (1, 2):                                          # (the new group's lr learns from its 2nd step)
        _grad(params[:2] + [extra], t)
        opt.step()
    assert len(opt.param_groups) == 2 and opt.hyperparameters(1)["lr"] != 1e-3


# -------------------------------------------------------------------------------------- 4. load_state_dict
def _trained(make, steps=3, seed=0):
    params = _params(seed)
    opt = make(params)
    for t in range(steps):
        _grad(params, t)
        opt.step()
    return params, opt


OTHER = {
    "another kind": lambda ps: hf.SGD(ps, lr=0.1, hyper=hf.SGD(lr=1e-4)),
    "another height": lambda ps: hf.Adam(ps, lr=0.01),
    "a taller tower": lambda ps: hf.Adam(ps, lr=0.01, hyper=hf.SGD(lr=1e-4, hyper=hf.SGD(lr=1e-6))),
    "another learned set": lambda ps: hf.Adam(ps, lr=0.01, hyper=hf.SGD(lr=1e-4), learn=("lr",)),
    "per-tensor lrs": lambda ps: hf.Adam(ps, lr=0.01, hyper=hf.SGD(lr=1e-4), per_tensor=True),
    "another level kind": lambda ps: hf.Adam(ps, lr=0.01, hyper=hf.Adam(lr=1e-4)),
    "torch's Adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
}


def _mine(ps, backend="reference"):
    return hf.Adam(ps, lr=0.01, hyper=hf.SGD(lr=1e-4), backend=backend)


def _corrupt(sd, how):
    first = sd["state"][0]
    if how == "truncated":
        del first["exp_avg"]
    elif how == "wrong shape":
        first["exp_avg"] = first["exp_avg"][:1]
    elif how == "wrong dtype":
        first["exp_avg_sq"] = first["exp_avg_sq"].float()
    elif how == "NaN in state":
        first["exp_avg"] = first["exp_avg"].clone()
        first["exp_avg"].view(-1)[3] = float("nan")
    elif how == "NaN in the tower":
        hp = first["hyperfused"]["groups"][0]["levels"][0]["hp"]
        hp["beta1"] = torch.full_like(hp["beta1"], float("nan"))
    elif how == "no tower":
        del first["hyperfused"]
    elif how == "a group fewer":
        sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"][:-1]
    return sd


@BACKENDS
@pytest.mark.parametrize("source", list(OTHER) + ["truncated", "wrong shape", "wrong dtype", "NaN in state",
                                                 "NaN in the tower", "no tower", "a group fewer"])
def test_a_checkpoint_that_does_not_fit_is_refused_and_changes_nothing(source, backend):
    if source in OTHER:
        sd = _trained(OTHER[source])[1].state_dict()
    else:
        sd = _corrupt(copy.deepcopy(_trained(_mine)[1].state_dict()), source)
    params, opt = _trained(lambda ps: _mine(ps, backend), seed=1)
    twin_params, twin = _trained(lambda ps: _mine(ps, backend), seed=1)
    before = _state_of(opt)
    with pytest.raises(ValueError) as err:
        opt.load_state_dict(sd)
    assert "load_state_dict" in str(err.value) or "parameter group" in str(err.value)
    assert _same(_state_of(opt), before)
    for t in range(3, 6):                        # it trains on exactly as an untouched twin
        for ps, o in ((params, opt), (twin_params, twin)):
            _grad(ps, t)
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twin_params))


UPPER_SGD = {"plain": {}, "nesterov": dict(nesterov=True), "dampening 0.3": dict(dampening=0.3),
             "dampening 0.6": dict(dampening=0.6)}


def _upper(kw, backend="reference"):
    return lambda ps: hf.Adam(ps, lr=0.01, hyper=hf.SGD(lr=1e-4, momentum=0.5, learn=("momentum",),
                                                         hyper=hf.SGD(lr=1e-6), **kw), backend=backend)


@BACKENDS
@pytest.mark.parametrize("saved,mine", [("nesterov", "plain"), ("plain", "nesterov"), ("dampening 0.3", "plain"),
                                        ("dampening 0.3", "dampening 0.6"), ("dampening 0.6", "nesterov")])
def test_a_checkpoint_of_a_level_with_other_fixed_options_is_refused_naming_them(saved, mine, backend):
    """A level above level 0 records SGD's nesterov and dampening (fixed once the optimizer exists) in the
    checkpoint; a load into a tower whose level differs is refused naming the option, and changes nothing.
    (These towers have the same state keys, so nothing else would tell them apart.)"""
    sd = _trained(_upper(UPPER_SGD[saved]))[1].state_dict()
    params, opt = _trained(_upper(UPPER_SGD[mine], backend), seed=1)
    before = _state_of(opt)
    key = "nesterov" if "nesterov" in (saved, mine) else "dampening"      # (the first that differs)
    with pytest.raises(ValueError, match=f"level 1: the checkpoint has {key}="):
        opt.load_state_dict(sd)
    assert _same(_state_of(opt), before)
    # the same options load and resume; a checkpoint written before levels recorded them loads unchecked
    params2, again = _trained(_upper(UPPER_SGD[saved], backend), seed=1)
    again.load_state_dict(sd)
    old = copy.deepcopy(sd)
    del old["state"][0]["hyperfused"]["groups"][0]["levels"][1]["fixed"]
    _trained(_upper(UPPER_SGD[saved], backend), seed=1)[1].load_state_dict(old)
    assert "fixed" in again.state_dict()["state"][0]["hyperfused"]["groups"][0]["levels"][1]


@BACKENDS
def test_an_lr_edited_in_a_checkpoint_is_used_as_torch_uses_it(backend):
    out = []
    for make in (lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                 lambda ps: hf.SGD(ps, lr=0.1, momentum=0.9, backend=backend)):
        params, opt = _trained(make)
        sd = opt.state_dict()
        sd["param_groups"][0]["lr"] = 0.03
        sd["param_groups"][0]["momentum"] = 0.5
        opt.load_state_dict(sd)
        for t in range(3, 6):
            _grad(params, t)
            opt.step()
        out.append(params)
    for a, b in zip(*out):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------- 5. copies
COPIES = {
    "deepcopy": lambda bundle: copy.deepcopy(bundle),
    "pickle": lambda bundle: pickle.loads(pickle.dumps(bundle)),
}


@KERNEL_BACKENDS
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("how", list(COPIES) + ["dcp-helpers"])
def test_a_copy_trains_on_bitwise_as_the_original(how, one_pass, backend):
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()

    def make(m):
        return hf.Adam(m.parameters(), lr=0.01, hyper=hf.SGD(lr=1e-4, momentum=0.5), one_pass=one_pass,
                       backend=backend)

    opt = make(model)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def step(m, o, t):
        o.zero_grad()
        (m(x * (1 + t)) ** 2).sum().backward()
        o.step()

    for t in range(3):
        step(model, opt, t)
    if how == "dcp-helpers":
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
        osd = get_optimizer_state_dict(model, opt)
        model2 = copy.deepcopy(model)
        opt2 = make(model2)
        set_optimizer_state_dict(model2, opt2, osd)
    else:
        c = COPIES[how]({"model": model, "opt": opt})
        model2, opt2 = c["model"], c["opt"]
    for t in range(3, 6):
        step(model, opt, t)
        step(model2, opt2, t)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt.hyperparameters() == opt2.hyperparameters()
    assert opt.hyper.hyperparameters() == opt2.hyper.hyperparameters()


# -------------------------------------------------------- 6. invariants over random configurations (seeded)
def _random_config(rng):
    kind = rng.choice(["sgd", "adam", "rmsprop", "adagrad"])
    cls = KINDS[kind][0]
    kw = dict(KINDS[kind][2])
    learn = None
    height = rng.choice([0, 1, 2])
    hyper = None
    for _ in range(height):
        hk = rng.choice(["sgd", "adam", "rmsprop"])
        hkw = {"sgd": dict(lr=1e-4), "adam": dict(lr=1e-5), "rmsprop": dict(lr=1e-6)}[hk]
        hyper = KINDS[hk][0](hyper=hyper, **hkw)
    if height and kind in ("adam", "rmsprop") and rng.random() < 0.5:
        learn = ("lr",)
    per_tensor = bool(height) and rng.random() < 0.3
    dtype = rng.choice([torch.float64, torch.float32])
    one_pass = rng.random() < 0.5
    backend = rng.choice(_backends())
    return cls, dict(kw, hyper=hyper, learn=learn, per_tensor=per_tensor, one_pass=one_pass, backend=backend), dtype


@pytest.mark.parametrize("seed", range(12))
def test_invariants_hold_on_random_configurations(seed):
    """A non-finite gradient changes nothing bitwise; a resume from a checkpoint is bitwise; a refused load
    changes nothing; a deepcopy trains on bitwise; 1 and 2 threads agree bitwise."""
    rng = random.Random(seed)
    cls, kw, dtype = _random_config(rng)

    def fresh():
        ps = _params(seed, dtype)
        return ps, cls(ps, **copy.deepcopy(kw))

    params, opt = fresh()
    for t in range(3):
        _grad(params, t)
        opt.step()
    # a non-finite gradient
    before = (_state_of(opt), [p.detach().clone() for p in params])
    _grad(params, 3)
    params[2].grad[rng.randrange(70)] = rng.choice([float("nan"), float("inf")])
    opt.step()
    after = _state_of(opt)
    skipped_before = before[0]["state"][0]["hyperfused"].pop("skipped_steps")
    skipped_after = after["state"][0]["hyperfused"].pop("skipped_steps")
    assert int(skipped_after) == int(skipped_before) + 1
    assert _same(after, before[0]) and all(torch.equal(a, b) for a, b in zip(params, before[1]))
    # a refused load changes nothing
    wrong = _trained(lambda ps: hf.SGD(ps, lr=0.1, hyper=hf.Adam(lr=1e-4)))[1].state_dict()
    snap = _state_of(opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(wrong)
    assert _same(_state_of(opt), snap)
    # resume, deepcopy and thread counts
    sd = opt.state_dict()
    p2, o2 = fresh()
    with torch.no_grad():
        for a, b in zip(p2, params):
            a.copy_(b)
    o2.load_state_dict(sd)
    c = copy.deepcopy({"p": params, "o": opt})
    threads = torch.get_num_threads()
    try:
        for t in range(4, 7):
            for i, (ps, o) in enumerate(((params, opt), (p2, o2), (c["p"], c["o"]))):
                torch.set_num_threads(1 if i == 1 else 2)
                _grad(ps, t)
                o.step()
    finally:
        torch.set_num_threads(threads)
    for a, b, d in zip(params, p2, c["p"]):
        assert torch.equal(a, b) and torch.equal(a, d)


# ---------------------------------------------------------------------------------------- 7. dtype and modes
@BACKENDS
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_float32_and_float64_parameters_in_one_group(backend, one_pass):
    """Plain: as torch's Adam (which takes mixed groups); a tower: as the reference backend."""
    def params():
        g = torch.Generator().manual_seed(3)
        return [torch.nn.Parameter(torch.randn(7, generator=g)),
                torch.nn.Parameter(torch.randn(70, generator=g, dtype=torch.float64))]

    def run(make):
        ps = params()
        opt = make(ps)
        for t in range(5):
            _grad(ps, t)
            opt.step()
        return ps

    if not one_pass:
        expect = run(lambda ps: torch.optim.Adam(ps, lr=0.01))
        got = run(lambda ps: hf.Adam(ps, lr=0.01, backend=backend))
        for a, b in zip(got, expect):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    expect = run(lambda ps: hf.Adam(ps, lr=0.01, hyper=hf.SGD(lr=1e-4), one_pass=one_pass, backend="reference"))
    got = run(lambda ps: hf.Adam(ps, lr=0.01, hyper=hf.SGD(lr=1e-4), one_pass=one_pass, backend=backend))
    for a, b in zip(got, expect):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@BACKENDS
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_gradients_made_under_inference_mode(backend, one_pass):
    """Such a gradient cannot be watched for in-place changes (no version counter): it is copied, not kept."""
    out = []
    for b in ("reference", backend):
        ps = _params()
        opt = hf.Adam(ps, lr=0.01, hyper=hf.SGD(lr=1e-4), one_pass=one_pass, backend=b)
        for t in range(4):
            with torch.inference_mode():
                _grad(ps, t)
            opt.step()
        out.append(ps)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind,key,value", [("sgd", "differentiable", True),
                                            ("adam", "amsgrad", True), ("adam", "differentiable", True),
                                            ("rmsprop", "centered", True), ("rmsprop", "momentum", 0.9),
                                            ("adagrad", "lr_decay", 0.1)])
def test_a_torch_keyword_not_implemented_is_refused_never_ignored(kind, key, value):
    """Set in param_groups (as code written for torch.optim would) or given in add_param_group: refused with a
    sentence, nothing changed; its "off" value is accepted."""
    cls = KINDS[kind][0]
    params = _params()
    opt = cls(params[:2], lr=0.01)
    _grad(params, 0)
    opt.step()
    before = (_state_of(opt), [p.detach().clone() for p in params])
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=key):
        opt.step()
    assert _same(_state_of(opt)["state"], before[0]["state"])
    assert all(torch.equal(a, b) for a, b in zip(params, before[1]))
    opt.param_groups[0][key] = type(value)(0)       # torch's "off" value
    opt.step()
    with pytest.raises(ValueError, match=key):
        opt.add_param_group({"params": [params[2]], key: value})
    assert len(opt.param_groups) == 1
