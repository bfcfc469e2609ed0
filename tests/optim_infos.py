"""The backend test matrix, in the spirit of torch's OptimizerInfo: for every kind of the kinds table
(hyperfused/kinds.py) the level-0 configurations to test, the towers to put above them, and the cases (kind,
variant, height). A kind added to the table is tested by every backend test file that reads this one."""
from __future__ import annotations

from typing import Dict, List

import torch

import hyperfused as hf
from hyperfused import kinds, ops
from towers import UPPER


def backends() -> List[str]:
    """The backends that run here: the reference, the C++ kernels when built, Triton (on CPU tensors under its
    interpreter when there is no GPU)."""
    out = ["reference"]
    if ops.extension_available():
        out.append("cpu")
    if ops.triton_available() and not torch.cuda.is_available():
        out.append("triton")
    return out

#: the level-0 learning rate each kind is tested with (steps large enough to move, small enough to stay finite);
#: a kind not named here is tested with its class's default lr
LR0 = {"sgd": 0.05, "adam": 0.01, "rmsprop": 0.01, "adagrad": 0.05}
#: what a configuration needs for every hyperparameter to be learnable (SGD learns momentum only when it is on)
LEARNABLE = {"sgd": dict(momentum=0.9)}
#: torch's variants of a kind that change its state or formulas (tested at height 1, each learned set)
EXTRA = {"sgd": [dict(momentum=0.9, nesterov=True), dict(momentum=0.9, nesterov=True, learn=("lr",)),
                 dict(momentum=0.9, nesterov=True, learn=("momentum",)), dict(momentum=0.9, dampening=0.3),
                 dict(momentum=0.9, dampening=0.3, learn=("momentum",))]}

CLS = {name: getattr(hf, spec.cls) for name, spec in kinds.KINDS.items()}

#: the levels above level 0, by height
TOWERS = {
    1: lambda: hf.SGD(lr=1e-7),
    2: lambda: hf.Adam(lr=1e-3, hyper=hf.SGD(lr=1e-7), **UPPER["adam"]),
    3: lambda: hf.RMSprop(lr=1e-4, hyper=hf.SGD(lr=1e-7, momentum=0.5, hyper=hf.Adagrad(lr=1e-8, **UPPER["adagrad"])),
                          **UPPER["rmsprop"]),
    # Nesterov's and dampened SGD above level 0 (in the compiled and Triton towers, as every kind); small steps: a
    # level learning the momentum of the one below multiplies the scales and overflows within 6 steps
    4: lambda: hf.Adam(lr=1e-3, hyper=hf.SGD(lr=1e-9, momentum=0.5, nesterov=True, learn=("lr",), hyper=hf.SGD(
        lr=1e-12, momentum=0.5, dampening=0.2, learn=("lr",), hyper=hf.SGD(lr=1e-15))), **UPPER["adam"]),
}


def variants(kind: str) -> List[Dict]:
    """Level-0 keyword sets of ``kind``: the default learned set, the configuration where everything is learnable,
    each hyperparameter learned alone, lr with the last one (kinds with three or more), one lr per tensor."""
    spec = kinds.KINDS[kind]
    base = LEARNABLE.get(kind, {})
    names = spec.learnable_names
    out: List[Dict] = [dict()]
    if base:
        out.append(dict(base))
    if len(names) > 1:
        out += [dict(base, learn=(name,)) for name in names]
    if len(names) > 2:
        out.append(dict(base, learn=(names[0], names[-1])))
    out.append(dict(per_tensor=True))
    return out + EXTRA.get(kind, [])


LEVEL0 = {kind: variants(kind) for kind in kinds.KINDS}


def cases():
    """(kind, variant index, height): every variant at height 1; the first two at every height."""
    for kind, vs in LEVEL0.items():
        for i in range(len(vs)):
            for height in TOWERS:
                if height > 1 and i > 1:
                    continue
                yield kind, i, height


def lr0(kind: str) -> float:
    if kind in LR0:
        return LR0[kind]
    import inspect
    return inspect.signature(CLS[kind]).parameters["lr"].default


def maker(kind: str, kw: Dict, height: int):
    """A function (params, backend, one_pass) -> the optimizer of this case."""
    def make(params, backend, one_pass):
        return CLS[kind](params, lr=lr0(kind), hyper=TOWERS[height](), backend=backend, one_pass=one_pass, **kw)
    return make


# SGD levels with Nesterov's momentum (its previous gradient in slot 1 or, learning its momentum too, slot 2) and
# with dampening (a step count: the first step takes the gradient whole) above level 0
NESTEROV_DAMPENED_TOWERS = {
    "adam/sgd-nesterov[lr,mu]/sgd": lambda p, b, o: hf.Adam(
        p, lr=0.01, hyper=hf.SGD(lr=1e-7, momentum=0.5, nesterov=True, hyper=hf.SGD(lr=1e-9)), backend=b,
        one_pass=o),
    "adam/sgd-dampened[lr,mu]/sgd": lambda p, b, o: hf.Adam(
        p, lr=0.01, hyper=hf.SGD(lr=1e-9, momentum=0.5, dampening=0.3, hyper=hf.SGD(lr=1e-15)), backend=b,
        one_pass=o),
    "sgd-per-tensor/sgd-nesterov[lr]/sgd-dampened[lr]/sgd": lambda p, b, o: hf.SGD(
        p, lr=0.05, momentum=0.9, per_tensor=True, learn=("lr",), hyper=hf.SGD(
            lr=1e-11, momentum=0.5, nesterov=True, learn=("lr",), hyper=hf.SGD(
                lr=1e-20, momentum=0.5, dampening=0.3, learn=("lr",), hyper=hf.SGD(lr=1e-28))),
        backend=b, one_pass=o),
}


def assert_tower_states_equal(mine, theirs, steps: int) -> None:
    """The levels above level 0 of two optimizers hold the same state (buffers, kept gradients to float64
    rounding; step counts and valid flags exactly), and a dampened level counted every one of ``steps`` steps."""
    a, b = mine._group_tower(0)["levels"], theirs._group_tower(0)["levels"]
    for k in range(1, len(b)):
        assert set(a[k]["state"]) == set(b[k]["state"]), k
        for key, v in b[k]["state"].items():
            w = a[k]["state"][key]
            if v.dtype == torch.bool or key == "step":
                assert torch.equal(w.cpu(), v.cpu()), (k, key)
            else:
                assert float((w.cpu() - v.cpu()).norm() / v.norm().clamp_min(1e-30)) <= 1e-12, (k, key)
    counted = [float(lv["state"]["step"]) for lv in a[1:] if "step" in lv["state"]]
    damped = [cfg for *_, cfg in mine._level_specs(0)[1:] if cfg.get("momentum") and float(cfg.get("dampening", 0))]
    assert counted == [float(steps)] * len(damped)
