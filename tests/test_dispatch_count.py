"""Host work of a step does not grow with the number of tensors: the ops a step dispatches (torch's and
hyperfused's) are the same in number for a few tensors and for many, host reads of CPU tensors included
(``aten::_local_scalar_dense``: the C++ kernels' scalar table is built from host numbers, the per-tensor step
counts and moved flags read as one vector each, hyperfused.ops.packed); the device path (Triton here, under the
interpreter; the CUDA kernels take the same Python path as the Triton ones for their tables) reads nothing on the
host at all."""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import hyperfused as hf
from hyperfused import ops

HOST_READ = "aten._local_scalar_dense.default"


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _dispatches(make, n, steps_before=3):
    g = torch.Generator().manual_seed(n)
    ps = [torch.nn.Parameter(torch.randn(300, generator=g)) for _ in range(n)]
    opt = make(ps)
    for t in range(steps_before + 1):
        for p in ps:
            p.grad = torch.randn(300, generator=g) * 1e-2
        if t == steps_before:
            with _Count() as c:
                opt.step()
        else:
            opt.step()
    return c.ops


MAKERS = {
    "Adam": lambda backend: (lambda ps: hf.Adam(ps, lr=1e-3, backend=backend)),
    "Adam/SGD": lambda backend: (lambda ps: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-5), backend=backend)),
    "Adam/SGD one-pass": lambda backend: (lambda ps: hf.Adam(ps, lr=1e-3, hyper=hf.SGD(lr=1e-5), one_pass=True,
                                                             backend=backend)),
    "SGD momentum lr,momentum / Adam": lambda backend: (lambda ps: hf.SGD(
        ps, lr=1e-2, momentum=0.9, learn=("lr", "momentum"), hyper=hf.Adam(lr=1e-4), backend=backend)),
    "RMSprop per-tensor / SGD": lambda backend: (lambda ps: hf.RMSprop(
        ps, lr=1e-3, per_tensor=True, hyper=hf.SGD(lr=1e-6), backend=backend)),
    "AdamW lr,weight_decay / SGD": lambda backend: (lambda ps: hf.AdamW(
        ps, lr=1e-3, weight_decay=0.1, learn=("lr", "weight_decay"), hyper=hf.SGD(lr=1e-6), backend=backend)),
}


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("make", ["adamw", "lion"])
def test_decoupled_decay_runs_in_the_update_pass(backend, make, monkeypatch):
    """AdamW's (and Lion's) decoupled decay costs no pass over the weights of its own: the step dispatches what
    the same optimizer without decay does, plus the product lr * weight_decay (a one-element op) and its column
    of the update's scalar table. (Both on the general path: without decay the cpu backend's steps would run as
    step programs, hyperfused/optim/program.py, which a decay never does.)"""
    from hyperfused.optim import base
    monkeypatch.setattr(base, "_PROGRAMS", False)
    if backend == "cpu" and not ops.extension_available():
        pytest.skip("the C++ extension is not built")
    if backend == "triton" and (not ops.triton_available() or not ops._triton.interpreting()):
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py)")
    cls = hf.Lion if make == "lion" else hf.AdamW
    plain = _dispatches(lambda ps: cls(ps, lr=1e-3, weight_decay=0.0, backend=backend), 6)
    decayed = _dispatches(lambda ps: cls(ps, lr=1e-3, weight_decay=0.1, backend=backend), 6)
    extra = decayed - plain
    assert not (plain - decayed), plain - decayed
    # the product, and its column of the scalar table: read on the host (cpu) or broadcast as a view (device)
    assert set(extra) <= {"aten.mul.Tensor", HOST_READ, "aten.view.default", "aten.expand.default"}, extra
    assert extra["aten.mul.Tensor"] == 1 and sum(extra.values()) <= 3, extra


@pytest.mark.parametrize("name", list(MAKERS))
def test_cpu_kernels_dispatch_as_many_ops_and_host_reads_for_4_and_40_tensors(name):
    if not ops.extension_available():
        pytest.skip("the C++ extension is not built")
    few, many = (_dispatches(MAKERS[name]("cpu"), n) for n in (4, 40))
    assert few == many, f"ops whose count grows with the tensors: " \
                        f"{ {k: (few.get(k), many.get(k)) for k in set(few) | set(many) if few.get(k) != many.get(k)} }"


@pytest.mark.parametrize("name", list(MAKERS))
def test_triton_path_dispatches_as_many_ops_for_4_and_40_tensors_and_reads_nothing_on_the_host(name):
    if not ops.triton_available() or not ops._triton.interpreting():
        pytest.skip("needs Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py)")
    few, many = (_dispatches(MAKERS[name]("triton"), n) for n in (4, 40))
    assert HOST_READ not in few and HOST_READ not in many
    assert few == many, f"ops whose count grows with the tensors: " \
                        f"{ {k: (few.get(k), many.get(k)) for k in set(few) | set(many) if few.get(k) != many.get(k)} }"


@pytest.mark.parametrize("device_path", [False, True])
@pytest.mark.parametrize("value", [True, False])
def test_moved_flags_update_in_a_fixed_number_of_ops(device_path, value):
    """The flags saying whether a tensor moved at its last step: set where the step's verdict says so, in the
    same ops for 3 flags as for 30 (the device route stacks them: torch's bool multi-tensor ops launch one
    kernel per tensor on CUDA)."""
    from hyperfused.optim.base import _flags_set_where
    counts = []
    for n in (3, 30):
        for verdict in (True, False):
            start = [bool(i % 3 == 0) for i in range(n)]
            flags = [torch.tensor(b) for b in start]
            with _Count() as c:
                _flags_set_where(flags, torch.tensor(verdict), value, device_path=device_path)
            want = [(value if verdict else b) for b in start]
            assert [bool(f) for f in flags] == want
            counts.append(sum(c.ops.values()))
    assert counts[0] == counts[2] and counts[1] == counts[3]


@pytest.mark.parametrize("host", [False, True])
@pytest.mark.parametrize("value", [True, False])
def test_packed_moved_flags_update_in_one_op(host, value):
    """The flags packed into one bool vector (hyperfused.ops.packed): set where the verdict says so, in one op
    (host route: nothing for a refused step)."""
    from hyperfused.optim.base import _flags_set_where
    for n in (3, 30):
        for verdict in (True, False):
            start = [bool(i % 3 == 0) for i in range(n)]
            flags = torch.tensor(start)
            views, ok = [flags[i] for i in range(n)], torch.tensor(verdict)
            with _Count() as c:
                _flags_set_where(flags, ok, value, host=host)
            assert [bool(f) for f in views] == [(value if verdict else b) for b in start]
            writes = sum(v for k, v in c.ops.items() if k not in (HOST_READ, "aten.is_nonzero.default"))
            assert writes == (0 if host and not verdict else 1 + (not value and not host)), c.ops


@pytest.mark.parametrize("value", [True, False])
def test_moved_flags_on_the_host_route_write_only_what_changes(value):
    """The C++ kernels' eager step reads the verdict and the flags (CPU tensors): a refused step writes nothing, a
    taken one writes only the flags that differ from ``value``."""
    from hyperfused.optim.base import _flags_set_where
    for verdict in (True, False):
        start = [bool(i % 3 == 0) for i in range(30)]
        flags, ok = [torch.tensor(b) for b in start], torch.tensor(verdict)
        with _Count() as c:
            _flags_set_where(flags, ok, value, host=True)
        assert [bool(f) for f in flags] == [(value if verdict else b) for b in start]
        writes = c.ops["aten.fill_.Scalar"]
        assert set(c.ops) <= {HOST_READ, "aten.is_nonzero.default", "aten.fill_.Scalar"}, c.ops
        assert writes == (sum(b != value for b in start) if verdict else 0)


def _table_by_columns(kind, learned, n, hp, raw, steps, valid, step_offset):
    """The scalar table as the device path used to build it, one column copy at a time (the oracle)."""
    from hyperfused import kinds
    from hyperfused.ops import reference as ref
    from hyperfused.ops.fused import _table_columns
    values, raws, sigs = _table_columns(kind, learned)
    out = torch.zeros((n, kinds.TABLE_COLS), dtype=torch.float64)
    for j, name in values:
        if hp.get(name) is not None:
            out[:, j].copy_(hp[name])
    for j, name in raws:
        out[:, j].copy_(raw[name])
    for j, name in sigs:
        out[:, j].copy_(ref.dsigma(raw[name].to(torch.float64)))
    if steps is not None:
        out[:, kinds.COL_STEP].copy_(torch.stack(steps) + step_offset)
    out[:, kinds.COL_VALID].copy_(torch.stack(valid) if isinstance(valid[0], torch.Tensor)
                                  else torch.tensor(valid, dtype=torch.float64))
    return out


@pytest.mark.parametrize("kind,learned", [("adam", ()), ("adam", ("lr",)), ("adam", ("lr", "beta1", "beta2")),
                                          ("rmsprop", ("lr", "alpha")), ("sgd", ("lr", "momentum"))])
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("dt", [torch.float32, torch.float64])
def test_device_scalar_table_in_few_ops_holds_the_same_values(kind, learned, n, dt):
    """The scalar table of the device path (the GPU backends; the Triton interpreter here) is made of stacked
    columns, one-element values broadcast as views: the same float64 values as copying each column into a zero
    table (every conversion to float64 is exact), in a fixed number of ops."""
    from hyperfused import kinds
    from hyperfused.ops import fused
    g = torch.Generator().manual_seed(n)
    spec = kinds.KINDS[kind]
    hp = {name: torch.rand((), generator=g, dtype=dt) * 0.5 + 0.3 for name in spec.hyper}
    raw = {name: torch.randn((), generator=g, dtype=dt) for name in spec.hyper}
    steps = [torch.tensor(float(i + 1)) for i in range(n)]
    for valid in ([torch.tensor(i % 2 == 0) for i in range(n)], [1.0, 0.0, 1.0, 1.0, 0.0][:n]):
        for off in (0.0, 1.0):
            with _Count() as c:
                dev = fused.scalars(kind, learned, n, hp, raw, steps, valid, "cpu", step_offset=off, host=False)
            want = _table_by_columns(kind, learned, n, hp, raw, steps, valid, off)
            assert dev.dtype == torch.float64 and torch.equal(dev, want), (dev, want)
            # ops that launch work (views aside): the stacks, a zero column, the offset, each dsigma's four and
            # the conversion of its raw value to float64
            launches = sum(v for k, v in c.ops.items() if not k.startswith(("aten.view", "aten.expand",
                                                                           "aten.lift_fresh")))
            assert launches <= 5 + 5 * len([x for x in learned if spec.parametrisation(x) == kinds.SIGMA]), c.ops
