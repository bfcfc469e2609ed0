"""The Triton AGD kernels (hyperfused/ops/triton/agd.py) against PyTorch, and hf.AGD on backend="triton".

Without a GPU they run under the Triton interpreter on CPU tensors (conftest.py sets TRITON_INTERPRET=1); on a
GPU machine the same tests run them compiled, on CUDA tensors.
"""
import math

import pytest
import torch
import torch.nn as nn

import hyperfused as hf
from hyperfused.ops import agd as agd_ops

pytestmark = pytest.mark.skipif(not hf.ops.triton_available(), reason="triton is not installed")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(30, 20), (8, 5, 3, 3), (1, 1), (7, 300), (4, 3, 5, 5), (3, 2, 1, 7)]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _small_tiles():
    """Small tiles and chunks, so the small test tensors span several programs and tiles."""
    from hyperfused.ops.triton import agd
    saved = dict(agd.AGD_CONFIG)
    agd.AGD_CONFIG.update(ROWS=64, CHUNK_ROWS=128, BO=8, BI=32)
    agd._MAPS.clear()
    yield
    agd.AGD_CONFIG.update(saved)
    agd._MAPS.clear()


def _grads(dtype, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).to(dtype).to(DEV) for s in shapes]


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_sumsq_and_update_match_pytorch(dtype):
    from hyperfused.ops.triton import agd
    gs = _grads(dtype)
    slices = [agd_ops.slices_of(g) for g in gs]
    got = agd.agd_sumsq(gs, slices)
    want = torch.cat([agd_ops.as_slices(g.double()).pow(2).sum(dim=(1, 2)) for g in gs])
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert _rel(got, want) <= (1e-14 if dtype == torch.float64 else 1e-6)
    ps = _grads(dtype, seed=1)
    expect = [p.clone() for p in ps]
    coef = torch.rand(sum(slices), dtype=torch.float64, device=DEV)
    agd.agd_update(ps, gs, coef)
    for p, g, c in zip(expect, gs, torch.split(coef, slices)):
        c = c.reshape(1, 1, *p.shape[2:]) if p.dim() == 4 else c
        p.copy_((p.to(torch.float64 if dtype == torch.float64 else torch.float32) - c * g.double()).to(dtype))
    for a, b in zip(ps, expect):
        assert _rel(a, b) <= TOL[dtype]


def test_update_writes_nothing_when_the_device_flag_says_skip():
    from hyperfused.ops.triton import agd
    gs = _grads(torch.float32)
    gs[1][0, 0, 0, 0] = float("nan")
    ps = _grads(torch.float32, seed=1)
    before = [p.clone() for p in ps]
    coef = torch.rand(sum(agd_ops.slices_of(g) for g in gs), dtype=torch.float64, device=DEV)
    agd.agd_update(ps, gs, coef, ok=torch.zeros((), dtype=torch.bool, device=DEV))
    for a, b in zip(ps, before):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_power_iteration_half_steps_match_pytorch(dtype):
    from hyperfused.ops.triton import agd
    gs = _grads(dtype)
    slices = [agd_ops.slices_of(g) for g in gs]
    gen = torch.Generator().manual_seed(3)
    vs = [nn.functional.normalize(torch.randn(s, g.shape[1], generator=gen, dtype=torch.float64), dim=1).to(DEV)
          for g, s in zip(gs, slices)]
    us = [nn.functional.normalize(torch.randn(s, g.shape[0], generator=gen, dtype=torch.float64), dim=1).to(DEV)
          for g, s in zip(gs, slices)]
    sq, gv = agd.agd_gv(gs, vs)
    gtu = agd.agd_gtu(gs, us)
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    assert _rel(sq, torch.cat([agd_ops.as_slices(g.double()).pow(2).sum(dim=(1, 2)) for g in gs])) <= tol
    for g, v, u, a, b in zip(gs, vs, us, gv, gtu):
        m = agd_ops.as_slices(g.double())
        assert _rel(a, torch.bmm(m, v.unsqueeze(2)).squeeze(2)) <= tol
        assert _rel(b, torch.bmm(m.transpose(1, 2), u.unsqueeze(2)).squeeze(2)) <= tol


def test_gtu_splits_the_rows_of_tensors_with_few_columns():
    """g^T u of tall tensors (few column programs) runs per range of rows, the ranges' partial sums added in order:
    the same values as torch's, the same bits on every call, and a grid that fills a GPU (the plan for the GPU's
    64 columns per program)."""
    from hyperfused.ops.triton import agd
    shapes = [(1500, 3), (700, 5, 3, 3), (9, 4)]
    gs = _grads(torch.float64, shapes, seed=5)
    dims = [agd._dims(g) for g in gs]
    plan = agd.gtu_plan(dims, max(1, agd.AGD_CONFIG["BI"] // agd._sp([d[2] for d in dims])))
    assert [p[1] for p in plan] == [6, 3, 1]                 # row ranges: 1500 / 256, 700 / 256, one
    gen = torch.Generator().manual_seed(6)
    us = [nn.functional.normalize(torch.randn(d[2], d[0], generator=gen, dtype=torch.float64), dim=1).to(DEV)
          for d in dims]
    out = agd.agd_gtu(gs, us)
    for g, u, b in zip(gs, us, out):
        m = agd_ops.as_slices(g)
        assert _rel(b, torch.bmm(m.transpose(1, 2), u.unsqueeze(2)).squeeze(2)) <= 1e-13
    assert all(torch.equal(a, b) for a, b in zip(out, agd.agd_gtu(gs, us)))
    for d_out, d_in in ((4096, 4096), (50257, 768), (768, 3072)):
        cols, ranges, rows = agd.gtu_plan([(d_out, d_in, 1)], 64)[0]
        assert cols * ranges >= min(agd.AGD_CONFIG["GTU_PROGRAMS"], cols * -(-d_out // 256)) // 2, (d_out, d_in)
        assert ranges * rows >= d_out and (ranges - 1) * rows < d_out


def test_many_tensors_one_launch_per_pass():
    from hyperfused.ops.triton import hyper
    shapes = [((i % 7) + 1, (i % 5) + 2) for i in range(210)]
    params = [nn.Parameter(w) for w in _grads(torch.float32, shapes, seed=2)]
    opt = hf.AGD(params, backend="triton")
    ref = [nn.Parameter(p.detach().clone()) for p in params]
    opt_ref = hf.AGD(ref, backend="reference")
    for p, q, g in zip(params, ref, _grads(torch.float32, shapes, seed=4)):
        p.grad, q.grad = g, g.clone()
    before = hyper.LAUNCHES["count"]
    opt.step()
    assert hyper.LAUNCHES["count"] - before == 3       # sums of squares, their finish, the update
    opt_ref.step()
    for a, b in zip(params, ref):
        assert _rel(a.detach(), b.detach()) <= 1e-5
    assert float(opt.eta) == pytest.approx(float(opt_ref.eta), rel=1e-6)


def test_non_finite_gradient_skips_the_step_on_the_device():
    params = [nn.Parameter(w) for w in _grads(torch.float32, [(6, 4), (4, 3, 3, 3)])]
    opt = hf.AGD(params, backend="triton")
    for p, g in zip(params, _grads(torch.float32, [(6, 4), (4, 3, 3, 3)], seed=5)):
        p.grad = g
    opt.step()
    eta, before = opt.eta.clone(), [p.detach().clone() for p in params]
    params[1].grad = params[1].grad.clone()
    params[1].grad[0, 0, 1, 1] = float("inf")
    opt.step()
    assert torch.equal(opt.eta, eta)
    for a, b in zip(params, before):
        assert torch.equal(a.detach(), b)
