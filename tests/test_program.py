"""Step programs (hyperfused/optim/program.py): the usual step of a param group, run with its decisions taken once,
computes bit for bit what the general path computes. Every configuration of the test matrix (every kind, its
variants, towers of every height) and a set of interruptions (a tensor sitting out, a skipped step, scheduler and
param_groups edits, a replaced state tensor, a checkpoint loaded, gradients changed in place) are run twice, with
programs and without, and everything an optimizer holds is compared."""
from __future__ import annotations

import pytest
import torch

import hyperfused as hf
from hyperfused import ops
from hyperfused.optim import base, program
from optim_infos import LEVEL0, cases, maker
from test_agd_contract import _assert_same as _bitwise_equal   # (nested dicts and lists, NaN-safe)

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="programs run the C++ kernels")


def _assert_same(ps, opt, qs, ref) -> None:
    for p, q in zip(ps, qs):
        assert torch.equal(p.detach(), q.detach())
    _bitwise_equal(opt.state_dict(), ref.state_dict())
    for gi in range(len(opt.param_groups)):
        assert opt.hyperparameters(gi) == ref.hyperparameters(gi)


def _params(dtype, sizes=(7, 33, 130, 4)):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64).to(dtype)) for n in sizes]


class _Counted:
    """How many steps each optimizer (by id) ran as a program."""

    def __init__(self, monkeypatch):
        self.runs = {}
        real = program.StepProgram.finish

        def finish(prog, opt, *a, **k):
            self.runs[id(opt)] = self.runs.get(id(opt), 0) + 1
            return real(prog, opt, *a, **k)

        monkeypatch.setattr(program.StepProgram, "finish", finish)


def _twins(make, dtype, monkeypatch, sizes=(7, 33, 130, 4)):
    """Two copies of the same model and optimizer: the first steps with programs, the second without."""
    ps, qs = _params(dtype, sizes), _params(dtype, sizes)
    monkeypatch.setattr(base, "_PROGRAMS", True)
    opt = make(ps)
    monkeypatch.setattr(base, "_PROGRAMS", False)
    ref = make(qs)
    return ps, opt, qs, ref


def _step_both(ps, opt, qs, ref, grads, programs: bool, monkeypatch) -> None:
    for which, params, o in ((True, ps, opt), (False, qs, ref)):
        monkeypatch.setattr(base, "_PROGRAMS", which and programs)
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()
        o.step()


def _grads(ps, g, scale=0.1):
    return [(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale + p.detach().double() * 0.01).to(p.dtype)
            for p in ps]


CASES = list(cases())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind,variant,height", CASES, ids=[f"{k}-{v}-h{h}" for k, v, h in CASES])
def test_every_configuration_steps_as_the_general_path(kind, variant, height, dtype, monkeypatch):
    make = maker(kind, LEVEL0[kind][variant], height)
    counted = _Counted(monkeypatch)
    ps, opt, qs, ref = _twins(lambda params: make(params, "cpu", False), dtype, monkeypatch)
    g = torch.Generator().manual_seed(1)
    for t in range(7):
        _step_both(ps, opt, qs, ref, _grads(ps, g), True, monkeypatch)
        _assert_same(ps, opt, qs, ref)
    # the first step makes the program, the others run it; a program covers a tower the compiled ops fuse into
    # pass A, without a gradient transform or a decay
    cfg0 = opt._level_specs(0)[0][4]
    covered = (ops.tower.fusable(opt._group_tower(0)["levels"], opt._level_specs(0), [p.grad for p in ps],
                                 opt._per_tensor, len(ps))
               and not cfg0["maximize"] and not cfg0["weight_decay"])
    assert counted.runs.get(id(opt), 0) == (6 if covered else 0)
    assert id(ref) not in counted.runs


def _height0(cls, **kw):
    return lambda params: cls(params, backend="cpu", **kw)


def test_height_zero_runs_as_a_program(monkeypatch):
    """Plain optimizers (nothing learned) have programs too: every kind, as torch's counterpart computes."""
    counted = _Counted(monkeypatch)
    for make in (_height0(hf.Adam), _height0(hf.SGD, lr=0.1, momentum=0.9), _height0(hf.RMSprop),
                 _height0(hf.Adagrad), _height0(hf.Lion), _height0(hf.SGD, lr=0.1, momentum=0.9, nesterov=True)):
        counted.runs.clear()           # (counted by id: an optimizer of the last round may have had this one's)
        ps, opt, qs, ref = _twins(make, torch.float32, monkeypatch)
        g = torch.Generator().manual_seed(2)
        for t in range(5):
            _step_both(ps, opt, qs, ref, _grads(ps, g), True, monkeypatch)
        _assert_same(ps, opt, qs, ref)
        assert counted.runs[id(opt)] == 4


@pytest.mark.parametrize("make", [
    lambda ps: hf.Adam(ps, lr=1e-3, one_pass=True, hyper=hf.SGD(lr=1e-5), backend="cpu"),
    lambda ps: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend="reference"),
    lambda ps: hf.Adam(ps, lr=1e-3, maximize=True, hyper=hf.SGD(lr=1e-5), backend="cpu"),
    lambda ps: hf.Adam(ps, lr=1e-3, weight_decay=1e-2, backend="cpu"),
    lambda ps: hf.AdamW(ps, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend="cpu"),
    lambda ps: hf.Lion(ps, lr=1e-4, weight_decay=0.1, backend="cpu"),
], ids=["one-pass", "reference", "maximize", "coupled-decay", "adamw", "lion-decay"])
def test_what_a_program_does_not_cover_takes_the_general_path(make, monkeypatch):
    counted = _Counted(monkeypatch)
    ps = _params(torch.float32)
    opt = make(ps)
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        for p, d in zip(ps, _grads(ps, g)):
            p.grad = d
        opt.step()
    assert not counted.runs and not any(entry[3] for entry in opt.__dict__.get("_programs", {}).values())


TOWERS = {
    "adam/sgd": lambda ps: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend="cpu"),
    "adam[lr]/sgd": lambda ps: hf.Adam(ps, lr=1e-3, learn=("lr",), hyper=hf.SGD(lr=1e-5), backend="cpu"),
    "adam-per-tensor/adam/sgd": lambda ps: hf.Adam(ps, lr=1e-3, per_tensor=True,
                                                   hyper=hf.Adam(lr=1e-4, hyper=hf.SGD(lr=1e-6)), backend="cpu"),
    "sgd-momentum/sgd": lambda ps: hf.SGD(ps, lr=0.05, momentum=0.9, hyper=hf.SGD(lr=1e-6), backend="cpu"),
    "rmsprop/sgd": lambda ps: hf.RMSprop(ps, lr=1e-3, hyper=hf.SGD(lr=1e-6), backend="cpu"),
    "adam": lambda ps: hf.Adam(ps, lr=1e-3, backend="cpu"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(TOWERS))
def test_interruptions_leave_both_paths_equal(name, dtype, monkeypatch):
    """Between steps run as programs: a tensor without a gradient, a non-finite gradient (skipped step), an LR
    scheduler's step, a beta changed in param_groups, a state tensor replaced, a checkpoint loaded, gradients kept
    and changed in place (zero_grad(set_to_none=False)); each is a step the program must hand back, or one it must
    run with what changed."""
    make = TOWERS[name]
    counted = _Counted(monkeypatch)
    ps, opt, qs, ref = _twins(make, dtype, monkeypatch)
    sched = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (opt, ref)]
    g = torch.Generator().manual_seed(4)
    saved = None
    general = []              # the steps opt took on the general path
    for t in range(24):
        ran = counted.runs.get(id(opt), 0)
        grads = _grads(ps, g)
        if t == 3:
            grads[1] = None                                   # a tensor sits out
        if t == 6:
            grads[0][0] = float("nan")                        # the step is skipped
        if t == 9 and "betas" in opt.param_groups[0]:
            for o in (opt, ref):
                o.param_groups[0]["betas"] = (0.8, 0.99)      # adopted from the next step
        if t == 11:
            for o, params in ((opt, ps), (ref, qs)):          # a state tensor replaced by an equal copy
                st = o.state[params[2]]
                key = next(k for k in st if k not in ("step", "moved") and isinstance(st[k], torch.Tensor)
                           and st[k].dim()) if any(k not in ("step", "moved") for k in st) else None
                if key is not None:
                    st[key] = st[key].clone()
        if t == 13:
            saved = [o.state_dict() for o in (opt, ref)]
        if t == 17:
            for o, sd in zip((opt, ref), saved):
                o.load_state_dict(sd)
        if t >= 20:                                           # the gradient tensors kept and written in place
            for params in (ps, qs):
                for p, d in zip(params, grads):
                    if p.grad is None:
                        p.grad = d.clone()
                    else:
                        p.grad.copy_(d)
            for o in (opt, ref):
                monkeypatch.setattr(base, "_PROGRAMS", o is opt)
                o.step()
        else:
            _step_both(ps, opt, qs, ref, grads, True, monkeypatch)
        for s in sched:
            s.step()
        _assert_same(ps, opt, qs, ref)
        if counted.runs.get(id(opt), 0) == ran:
            general.append(t)
    # the general path: the first step (it makes the program), the step a tensor sits out and the next (the kept
    # plan was dropped), the step that adopts the new betas (new specs) and the one after the checkpoint is loaded;
    # a program runs every other step, the skipped one included
    assert general == [0, 3, 4] + ([9] if "betas" in opt.param_groups[0] else []) + [17]


def test_two_groups_one_covered_one_not(monkeypatch):
    """A group with a program and a group without (weight decay) step together: one verdict, both as the general
    path computes them."""
    counted = _Counted(monkeypatch)

    def make(params):
        return hf.Adam([{"params": params[:2]}, {"params": params[2:], "weight_decay": 1e-2}], lr=1e-3,
                       hyper=hf.SGD(lr=1e-5), backend="cpu")

    ps, opt, qs, ref = _twins(make, torch.float64, monkeypatch)
    g = torch.Generator().manual_seed(5)
    for t in range(8):
        grads = _grads(ps, g)
        if t == 4:
            grads[3][0] = float("inf")       # (in the uncovered group: the covered one skips too)
        _step_both(ps, opt, qs, ref, grads, True, monkeypatch)
        _assert_same(ps, opt, qs, ref)
    assert counted.runs[id(opt)] == 7


def test_many_tensors_take_the_tensor_table(monkeypatch):
    """Past fused._HOST_TABLE_MAX tensors the general path builds its tables by tensor ops; a program fills its
    own on the host, with the same values."""
    from hyperfused.ops import fused
    counted = _Counted(monkeypatch)
    monkeypatch.setattr(fused, "_HOST_TABLE_MAX", 3)
    ps, opt, qs, ref = _twins(TOWERS["adam-per-tensor/adam/sgd"], torch.float64, monkeypatch)
    g = torch.Generator().manual_seed(6)
    for t in range(6):
        _step_both(ps, opt, qs, ref, _grads(ps, g), True, monkeypatch)
        _assert_same(ps, opt, qs, ref)
    assert counted.runs[id(opt)] == 5
