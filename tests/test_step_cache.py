"""What a step takes again from the last one (the host-time caches of a small model's step) is taken only while it
is still true: the same parameters, each with a dense gradient and the same state, on the same device and dtype.
Each event below changes one of these; the step must then see the change, as torch's own optimizer does."""
import copy

import pytest
import torch

import hyperfused as hf


def _models(n=4, numel=33):
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(numel, generator=g, dtype=torch.float64) for _ in range(n)]
    return [torch.nn.Parameter(t.clone()) for t in base], [torch.nn.Parameter(t.clone()) for t in base]


def _grads(ps, qs, g, skip=()):
    for i, (p, q) in enumerate(zip(ps, qs)):
        if i in skip:
            p.grad = q.grad = None
        else:
            d = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.grad, q.grad = d.clone(), d.clone()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_events_between_steps_are_seen_as_torch_sees_them(backend):
    """hf.Adam at height 0 with default arguments against torch.optim.Adam, step by step, through: a parameter
    without a gradient, a parameter replaced in the group's list, a sparse gradient (refused, nothing changes),
    a checkpoint loaded, a new parameter group."""
    ps, qs = _models()
    ours = hf.Adam(ps, backend=backend)
    theirs = torch.optim.Adam(qs, foreach=False)
    g = torch.Generator().manual_seed(1)

    def step(skip=()):
        _grads(ps, qs, g, skip)
        ours.step()
        theirs.step()
        for p, q in zip(ours.param_groups[0]["params"], theirs.param_groups[0]["params"]):
            torch.testing.assert_close(p.detach(), q.detach(), atol=1e-12, rtol=1e-12)

    for _ in range(3):
        step()
    step(skip=(1,))                      # no gradient: left alone, its step count does not move
    assert ours.state[ps[1]]["step"].item() == theirs.state[qs[1]]["step"].item() == 3
    step()
    saved_ours, saved_theirs = copy.deepcopy(ours.state_dict()), copy.deepcopy(theirs.state_dict())
    new_p, new_q = (torch.nn.Parameter(torch.full((33,), 0.5, dtype=torch.float64)) for _ in range(2))
    ps[2] = ours.param_groups[0]["params"][2] = new_p        # the same list, one entry replaced: fresh state
    qs[2] = theirs.param_groups[0]["params"][2] = new_q
    step()
    assert ours.state[new_p]["step"].item() == 1
    x_before = [p.detach().clone() for p in ps]
    ps[0].grad = torch.randn(33, dtype=torch.float64).to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        ours.step()
    for p, x in zip(ps, x_before):
        assert torch.equal(p.detach(), x)
    ours.state[ps[3]].clear()            # a state emptied in place: made again, as torch does
    theirs.state[qs[3]].clear()
    step()
    ours.load_state_dict(saved_ours)     # a new state mapping: its tensors, not the ones of the last step
    theirs.load_state_dict(saved_theirs)
    assert ours.state[ps[0]]["step"].item() == 5
    step()
    step()
    r, s = torch.nn.Parameter(torch.ones(5, dtype=torch.float64)), torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
    ours.add_param_group({"params": [r]})
    theirs.add_param_group({"params": [s]})
    ps.append(r)
    qs.append(s)
    step()
    torch.testing.assert_close(r.detach(), s.detach(), atol=1e-12, rtol=1e-12)


def _plan_view(plan):
    out = {}
    for k, v in plan.items():
        if isinstance(v, list):
            out[k] = [id(x) if isinstance(x, (torch.Tensor, dict)) else x for x in v]
        elif isinstance(v, (torch.Tensor, dict)) or hasattr(v, "name"):
            out[k] = id(v)
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("hyper", [False, True])
def test_a_plan_taken_again_is_the_plan_built_afresh(hyper):
    """After each event, the step's collected plan (tensors, gradients, state, dtype, device, backend) is the one
    built from nothing: the cached plan is dropped whenever it no longer holds."""
    g = torch.Generator().manual_seed(2)
    ps = [torch.nn.Parameter(torch.randn(17, generator=g)) for _ in range(3)]
    opt = hf.Adam(ps, lr=1e-3, backend="cpu", **({"hyper": hf.SGD(lr=1e-6)} if hyper else {}))

    def check():
        group = opt.param_groups[0]
        plan = opt._collect(0, group)
        opt.__dict__.get("_collected", {}).clear()
        fresh = opt._collect(0, group)
        assert _plan_view(plan) == _plan_view(fresh)

    def grads():
        for p in ps:
            if p.grad is None or p.grad.dtype != p.dtype:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)

    grads()
    opt.step()
    check()                                  # the usual step: taken again
    opt.step()
    ps[1].grad = None                        # a tensor without a gradient
    check()
    grads()
    opt.step()
    opt.state[ps[0]] = {k: v.clone() for k, v in opt.state[ps[0]].items()}    # a state dict replaced
    check()
    opt.step()
    ps[2].data = ps[2].data.double()         # the same Parameter, another dtype (module.double())
    grads()
    check()
    opt.param_groups[0]["params"][0] = torch.nn.Parameter(torch.zeros(17))   # an entry replaced
    check()


@pytest.mark.parametrize("one_pass", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_a_checkpoint_loaded_into_a_stepped_optimizer_continues_as_into_a_fresh_one(one_pass, backend):
    """What a step keeps from the last (the last update's values, computed from its raw betas) belongs to the state
    it was computed from: after a load, the loaded state's values are used, bit for bit as by a new optimizer."""
    def make(ps):
        return hf.Adam(ps, lr=1e-2, learn=("lr", "beta1", "beta2"), hyper=hf.SGD(lr=1e-3), one_pass=one_pass,
                       backend=backend)

    g = torch.Generator().manual_seed(3)
    ps = [torch.nn.Parameter(torch.randn(9, generator=g)) for _ in range(2)]
    opt = make(ps)
    for _ in range(3):
        for p in ps:
            p.grad = torch.randn(9, generator=g)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    x_saved = [p.detach().clone() for p in ps]
    for _ in range(2):                       # the optimizer moves on from the checkpoint
        for p in ps:
            p.grad = torch.randn(9, generator=g)
        opt.step()
    qs = [torch.nn.Parameter(x.clone()) for x in x_saved]
    fresh = make(qs)
    fresh.load_state_dict(copy.deepcopy(saved))
    with torch.no_grad():
        for p, x in zip(ps, x_saved):
            p.copy_(x)
    opt.load_state_dict(saved)
    for _ in range(3):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(9, generator=g)
            q.grad = p.grad.clone()
        opt.step()
        fresh.step()
        for p, q in zip(ps, qs):
            assert torch.equal(p.detach(), q.detach())
    assert opt.hyperparameters() == fresh.hyperparameters()


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_what_a_step_keeps_does_not_keep_the_gradients_alive(backend):
    """After a step and zero_grad() the step's gradients are freed (nothing of the optimizer's keeps them: at
    height 0 no previous gradient is needed), as with torch's optimizers: a model's worth of memory otherwise."""
    import gc
    import weakref
    ps = [torch.nn.Parameter(torch.randn(8)) for _ in range(3)]
    opt = hf.Adam(ps, backend=backend)
    refs = []
    for _ in range(3):
        opt.zero_grad()
        for p in ps:
            p.grad = torch.randn(8)
            refs.append(weakref.ref(p.grad))
        opt.step()
    opt.zero_grad()
    gc.collect()
    assert all(r() is None for r in refs)


def test_the_verdict_a_caller_gets_is_its_own():
    """The skip decision's tensor handed out by hf.ops.grads_finite is the caller's to change: the next steps do
    not see it."""
    ps = [torch.nn.Parameter(torch.randn(5)) for _ in range(2)]
    opt = hf.Adam(ps, backend="cpu")
    for p in ps:
        p.grad = torch.randn(5)
    ok = hf.ops.grads_finite("cpu", [p.grad for p in ps])
    assert bool(ok)
    ok &= torch.tensor(False)
    x = [p.detach().clone() for p in ps]
    opt.step()
    assert bool(hf.ops.grads_finite("cpu", [p.grad for p in ps]))
    assert opt.skipped_steps == 0 and not any(torch.equal(p.detach(), y) for p, y in zip(ps, x))


def test_eager_steps_after_a_compiled_step_see_what_it_wrote():
    """A compiled step writes the last update's values (level 0's 'used') without the eager step's bookkeeping: the
    eager steps after it rebuild their Jacobian from what it wrote. Eager, compiled (aot_eager, bitwise as eager),
    eager again: bit for bit the all-eager trajectory."""
    def run(compiled_at):
        g = torch.Generator().manual_seed(4)
        ps = [torch.nn.Parameter(torch.randn(6, generator=g)) for _ in range(2)]
        opt = hf.Adam(ps, lr=1e-2, learn=("lr", "beta1", "beta2"), hyper=hf.SGD(lr=1e-3), backend="cpu")
        step_c = torch.compile(opt.step, backend="aot_eager")
        for t in range(5):
            for p in ps:
                p.grad = torch.randn(6, generator=g)
            (step_c if t in compiled_at else opt.step)()
        return [p.detach().clone() for p in ps], opt.hyperparameters()

    want = run(())
    got = run((2,))
    assert all(torch.equal(a, b) for a, b in zip(want[0], got[0])) and want[1] == got[1]


def test_copies_carry_no_step_caches_and_continue_bitwise():
    """copy.deepcopy and pickle leave out what a step keeps from the last (rebuilt at the copy's first step); the
    copy continues bit for bit as the original."""
    import pickle
    g = torch.Generator().manual_seed(5)
    ps = [torch.nn.Parameter(torch.randn(7, generator=g)) for _ in range(2)]
    opt = hf.Adam(ps, lr=1e-2, learn=("lr", "beta1", "beta2"), hyper=hf.SGD(lr=1e-3), backend="cpu")
    grads = [[torch.randn(7, generator=g) for _ in ps] for _ in range(5)]
    for t in range(2):
        for p, d in zip(ps, grads[t]):
            p.grad = d.clone()
        opt.step()
    caches = set(type(opt)._STEP_CACHES)
    assert caches & set(opt.__dict__)
    twins = [copy.deepcopy((ps, opt)), pickle.loads(pickle.dumps((ps, opt)))]
    assert not any(caches & set(twin[1].__dict__) for twin in twins)
    for t in range(2, 5):
        for params, o in [(ps, opt)] + twins:
            for p, d in zip(params, grads[t]):
                p.grad = d.clone()
            o.step()
    for params, o in twins:
        assert all(torch.equal(a.detach(), b.detach()) for a, b in zip(params, ps))
        assert o.hyperparameters() == opt.hyperparameters()


def _backends():
    from hyperfused import ops
    out = ["cpu", "reference"]
    if ops.triton_available() and ops._triton.interpreting():
        out.append("triton")
    return out


@pytest.mark.parametrize("backend", _backends())
def test_step_counts_written_or_replaced_in_the_state_are_the_ones_the_next_step_uses(backend):
    """A group's step counts are kept as one vector, each state holding the view of its element (one op a step for
    all of them): a count written in place, or replaced by another tensor (of the vector's dtype, or of another),
    between two steps is the count the next step's bias correction uses, as with torch.optim.Adam."""
    ps, qs = _models()
    ours = hf.Adam(ps, backend=backend)
    theirs = torch.optim.Adam(qs, foreach=False)
    g = torch.Generator().manual_seed(1)

    def step():
        _grads(ps, qs, g)
        ours.step()
        theirs.step()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p.detach(), q.detach(), atol=1e-12, rtol=1e-12)

    for _ in range(3):
        step()
    ours.state[ps[0]]["step"].fill_(40.0)                                    # in place
    theirs.state[qs[0]]["step"].fill_(40.0)
    step()
    ours.state[ps[1]]["step"] = torch.tensor(7.0, dtype=torch.float64)        # replaced, the same dtype
    theirs.state[qs[1]]["step"] = torch.tensor(7.0)
    step()
    step()
    ours.state[ps[2]]["step"] = torch.tensor(20.0, dtype=torch.float32)       # replaced, another dtype
    theirs.state[qs[2]]["step"] = torch.tensor(20.0)
    step()
    step()
    assert [ours.state[p]["step"].item() for p in ps] == [45.0, 11.0, 22.0, 8.0]
    assert [ours.state[p]["step"].item() for p in ps] == [theirs.state[q]["step"].item() for q in qs]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("one_pass", [False, True])
def test_moved_flags_written_or_replaced_in_the_state_are_the_ones_the_next_step_uses(backend, one_pass,
                                                                                       monkeypatch):
    """The moved flags (whether a tensor's last update has a Jacobian) are kept as one vector too: a flag cleared
    in place, or replaced by another tensor, between two steps drops that tensor's hypergradient term at the next
    step, bit for bit as an optimizer whose flags are separate tensors (hyperfused.ops.packed disabled)."""
    from hyperfused.ops import packed
    ps, qs = _models()
    make = lambda params: hf.Adam(params, lr=1e-2, hyper=hf.SGD(lr=1e-3), backend=backend,  # noqa: E731
                                  one_pass=one_pass)
    ours = make(ps)
    pack = packed.pack
    monkeypatch.setattr(packed, "pack", lambda states: None)
    theirs = make(qs)
    g = torch.Generator().manual_seed(1)

    def step():
        _grads(ps, qs, g)
        monkeypatch.setattr(packed, "pack", pack)
        ours.step()
        monkeypatch.setattr(packed, "pack", lambda states: None)
        theirs.step()
        for p, q in zip(ps, qs):
            assert torch.equal(p.detach(), q.detach())
        assert ours.hyperparameters() == theirs.hyperparameters()

    for _ in range(3):
        step()
    assert isinstance(ours._collected[0][3], packed.PackedStates) and ours._collected[0][3].steps is not None
    assert not isinstance(theirs._collected[0][3], packed.PackedStates)
    ours.state[ps[0]]["moved"].fill_(False)                              # in place
    theirs.state[qs[0]]["moved"].fill_(False)
    step()
    ours.state[ps[2]]["moved"] = torch.tensor(False)                     # replaced
    theirs.state[qs[2]]["moved"] = torch.tensor(False)
    step()
    step()
    assert ours.hyperparameters() != make([torch.nn.Parameter(torch.zeros(1))]).hyperparameters()   # (it learned)


@pytest.mark.parametrize("learn", [("lr",), ("lr", "beta1", "beta2")])
@pytest.mark.parametrize("one_pass", [False, True])
def test_per_tensor_lrs_take_the_values_again_and_step_as_without_caches(one_pass, learn, monkeypatch):
    """With per-tensor lrs the step's values are the level's own dict while every tensor has a gradient, so pass B's
    values and the Jacobian's are taken again from the last step (they were made anew every step); the trajectory
    is bit for bit the one of an optimizer whose caches are cleared before every step, through a step that a tensor
    sits out. (The general path's caches: step programs, which keep their own, are off; test_program.py.)"""
    from hyperfused.optim import base
    from hyperfused.optim.base import HyperOptimizer
    monkeypatch.setattr(base, "_PROGRAMS", False)

    def run(clear):
        g = torch.Generator().manual_seed(5)
        ps = [torch.nn.Parameter(torch.randn(9, generator=g, dtype=torch.float64)) for _ in range(4)]
        opt = hf.Adam(ps, lr=1e-2, per_tensor=True, learn=learn, hyper=hf.SGD(lr=1e-4), backend="cpu",
                      one_pass=one_pass)
        for t in range(6):
            for i, p in enumerate(ps):
                p.grad = None if (t == 3 and i == 1) else torch.randn(9, generator=g, dtype=torch.float64)
            if clear:
                for name in HyperOptimizer._STEP_CACHES:
                    opt.__dict__.pop(name, None)
            opt.step()
        return ps, opt

    ps, opt = run(False)
    qs, ref_opt = run(True)
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))
    assert opt.hyperparameters() == ref_opt.hyperparameters()
    level = opt._group_tower(0)["levels"][0]
    if learn == ("lr",):
        assert opt._update_vals[0][1] is level["hp"]    # pass B's values, keyed on the level's own dict
    else:                                               # sigma(betas) of the last update, kept for the Jacobian
        assert opt._used_vals[0][0] is level["used"]
