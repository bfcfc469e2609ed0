"""Automatic Gradient Descent against the authors' algorithm, the spectral variant against exact spectral
norms, the batched power iteration, and the API's refusals."""
import math

import pytest
import torch
import torch.nn as nn

import hyperfused as hf
from hyperfused.ops import agd as agd_ops


def fcn(depth=4, width=32, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(36, width, bias=False)]
    for _ in range(depth - 2):
        layers += [nn.ReLU(), nn.Linear(width, width, bias=False)]
    layers += [nn.ReLU(), nn.Linear(width, 5, bias=False)]
    return nn.Sequential(*layers).to(dtype)


def cnn(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5, bias=False)).to(dtype)


def data(steps, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 1, 6, 6, generator=g).to(dtype), torch.randint(0, 5, (16,), generator=g))
            for _ in range(steps)]


def authors_step(params, gain=1.0):
    """The authors' loop (jxbz/agd): per-parameter norms over dims (0, 1), G, eta, the update."""
    L = len(params)
    G = 0.0
    for p in params:
        scale = math.sqrt(p.shape[0] / p.shape[1]) / (math.sqrt(p.shape[2] * p.shape[3]) if p.dim() == 4 else 1)
        G += scale * p.grad.norm(dim=(0, 1)).sum()
    G /= L
    eta = math.log(0.5 * (1 + math.sqrt(1 + 4 * G)))
    for p in params:
        scale = math.sqrt(p.shape[0] / p.shape[1]) / (math.sqrt(p.shape[2] * p.shape[3]) if p.dim() == 4 else 1)
        p.data -= gain * eta / L * scale * p.grad / p.grad.norm(dim=(0, 1), keepdim=True)
    return eta


def _train(model, step, batches):
    etas = []
    for x, y in batches:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        etas.append(step())
    return etas


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("net", ["fcn", "cnn"])
def test_frobenius_agd_reproduces_the_authors_algorithm(net, backend):
    if backend == "triton" and (torch.cuda.is_available() or not hf.ops.triton_available()):
        pytest.skip("these models run on CPU tensors: the Triton kernels only under the interpreter here "
                    "(tests/test_gpu.py runs them on CUDA tensors)")
    check_frobenius_against_the_authors(fcn if net == "fcn" else cnn, backend)


def check_frobenius_against_the_authors(make, backend, device="cpu", gain=1.0):
    """hf.AGD (Frobenius) and the authors' loop train two copies of a float64 network for 10 steps: weights and
    eta agree to 1e-10."""
    ours, theirs = make().to(device), make().to(device)
    opt = hf.AGD(ours.parameters(), gain=gain, backend=backend)
    batches = [(x.to(device), y.to(device)) for x, y in data(10)]
    ps = list(theirs.parameters())
    e_theirs = _train(theirs, lambda: authors_step(ps, gain), batches)
    e_ours = _train(ours, lambda: (opt.step(), float(opt.eta))[1], batches)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert float((a - b).norm() / b.norm()) <= 1e-10
    assert e_ours == pytest.approx(e_theirs, rel=1e-10)
    assert isinstance(opt.eta, torch.Tensor) and opt.eta.dim() == 0


def _exact_spectral_step(params, gain=1.0):
    L = len(params)
    sig = []
    G = 0.0
    for p in params:
        g = agd_ops.as_slices(p.grad)
        s = torch.linalg.matrix_norm(g, ord=2)
        sig.append(s)
        G += agd_ops.scale_of(p) * (g.pow(2).sum(dim=(1, 2)) / s).sum()
    G /= L
    eta = math.log(0.5 * (1 + math.sqrt(1 + 4 * float(G))))
    for p, s in zip(params, sig):
        c = gain * eta / L * agd_ops.scale_of(p) / s
        p.data -= (c.reshape(1, 1, *p.shape[2:]) if p.dim() == 4 else c) * p.grad
    return eta


@pytest.mark.parametrize("backend", ["auto", "triton"])
@pytest.mark.parametrize("net", ["fcn", "cnn"])
def test_spectral_agd_steps_match_exact_spectral_norms(net, backend):
    if backend == "triton" and (torch.cuda.is_available() or not hf.ops.triton_available()):
        pytest.skip("the Triton AGD kernels run here under the interpreter on CPU tensors")
    check_spectral_against_exact_norms(fcn if net == "fcn" else cnn, backend)


def check_spectral_against_exact_norms(make, backend, device="cpu", gain=1.0):
    """Each spectral AGD step (tol 1e-7) within 1e-3 of the step made with exact spectral norms, both continued
    from the same weights for 6 steps."""
    ours, exact = make().to(device), make().to(device)
    opt = hf.AGD(ours.parameters(), gain=gain, norm="spectral", tol=1e-7, max_iter=100, backend=backend)
    ps = list(exact.parameters())
    for x, y in data(6):
        x, y = x.to(device), y.to(device)
        for m in (ours, exact):
            m.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
        w0 = [p.detach().clone() for p in ours.parameters()]
        opt.step()
        with torch.no_grad():
            _exact_spectral_step(ps, gain)
        for a, b, w in zip(ours.parameters(), exact.parameters(), w0):
            step_ours, step_exact = a.detach() - w, b.detach() - w
            assert float((step_ours - step_exact).norm() / step_exact.norm()) <= 1e-3
        with torch.no_grad():          # continue both from the same weights
            for a, b in zip(ours.parameters(), exact.parameters()):
                b.copy_(a)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("norm", ["frobenius", "spectral"])
@pytest.mark.parametrize("gain", [0.5, 2.0])
def test_gain_multiplies_every_step_as_in_the_authors_algorithm(gain, norm, backend):
    """gain != 1 against the authors' loop (Frobenius) and exact spectral norms (spectral), both with the same
    gain, on the convolutional network (conv kernels and a matrix: gain applies to every slice)."""
    if backend == "triton" and (torch.cuda.is_available() or not hf.ops.triton_available()):
        pytest.skip("the Triton AGD kernels run here under the interpreter on CPU tensors")
    if norm == "frobenius":
        check_frobenius_against_the_authors(cnn, backend, gain=gain)
    else:
        check_spectral_against_exact_norms(cnn, backend, gain=gain)


def _clamp_case(m, n, slices, device="cpu"):
    """Per slice g = diag(10, 1, ..., 1) of shape (m, n), and unit start vectors u, v = normalize(e_2 + 1e-3 e_1),
    nearly orthogonal to the top singular vectors e_1: one iteration leaves the estimate of sigma near 1, below
    the lower clamp |g|_F / sqrt(min(m, n)); later iterations would rise towards sigma_1 = 10."""
    g = torch.zeros(slices, m, n, dtype=torch.float64)
    g.diagonal(dim1=1, dim2=2).fill_(1.0)
    g[:, 0, 0] = 10.0
    u, v = torch.zeros(slices, m, dtype=torch.float64), torch.zeros(slices, n, dtype=torch.float64)
    u[:, 1], v[:, 1] = 1.0, 1.0
    u[:, 0], v[:, 0] = 1e-3, 1e-3
    u, v = nn.functional.normalize(u, dim=1), nn.functional.normalize(v, dim=1)
    bound = g.flatten(1).norm(dim=1) / math.sqrt(min(m, n))
    for one, start in ((g.transpose(1, 2), u), (g, v)):      # one iteration from either half-step: below the clamp
        x = nn.functional.normalize(torch.bmm(one, start.unsqueeze(2)).squeeze(2), dim=1)
        raw = torch.bmm(one.transpose(1, 2), x.unsqueeze(2)).squeeze(2).norm(dim=1)
        assert bool((raw < 0.7 * bound).all())
    return g.to(device), u.to(device), v.to(device), bound.to(device)


def test_power_iteration_estimate_is_clamped_to_the_frobenius_bounds():
    """max_iter=1 from start vectors nearly orthogonal to the top singular vectors: the estimate (about 1) is
    raised to |g|_F / sqrt(rank); a slice started on its top singular vectors keeps its exact sigma (10)."""
    wide, u_w, v_w, bound_w = _clamp_case(40, 60, 3)
    tall, u_t, v_t, bound_t = _clamp_case(9, 4, 1)
    u_w[0].zero_()[0] = 1.0
    v_w[0].zero_()[0] = 1.0
    sig, _, _, iters = hf.ops.power_iteration([wide, tall[0]], [u_w, u_t[0]], [v_w, v_t[0]], tol=1e-9, max_iter=1)
    assert iters == [1, 1]
    assert float(sig[0][0]) == 10.0
    torch.testing.assert_close(sig[0][1:], bound_w[1:], rtol=1e-14, atol=0)
    torch.testing.assert_close(sig[1], bound_t[0], rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_spectral_agd_steps_with_the_clamped_sigma(backend):
    if backend == "triton" and (torch.cuda.is_available() or not hf.ops.triton_available()):
        pytest.skip("the Triton AGD kernels run here under the interpreter on CPU tensors")
    check_spectral_clamp(backend)


def check_spectral_clamp(backend, device="cpu"):
    """hf.AGD(norm="spectral", max_iter=1) from the start vectors of _clamp_case on a matrix and a convolution
    kernel: every slice's sigma is the lower clamp |g|_F / sqrt(rank), in G and in the step."""
    cases = [((40, 60), _clamp_case(40, 60, 1, device)), ((6, 4, 2, 2), _clamp_case(6, 4, 4, device))]
    gen = torch.Generator().manual_seed(0)
    params = [nn.Parameter(torch.randn(shape, generator=gen, dtype=torch.float64).to(device)) for shape, _ in cases]
    opt = hf.AGD(params, norm="spectral", max_iter=1, backend=backend)
    for p, (shape, (g, u, v, _)) in zip(params, cases):        # slices (kh*kw, d_out, d_in) back to the kernel
        p.grad = g[0] if len(shape) == 2 else g.reshape(*shape[2:], *shape[:2]).permute(2, 3, 0, 1).contiguous()
        opt.state[p]["u"], opt.state[p]["v"] = u.clone(), v.clone()
    before = [p.detach().clone() for p in params]
    opt.step()
    L = len(params)
    G = sum(agd_ops.scale_of(p) * float((g.pow(2).sum(dim=(1, 2)) / bound).sum())
            for p, (_, (g, _, _, bound)) in zip(params, cases)) / L
    eta = math.log((1 + math.sqrt(1 + 4 * G)) / 2)
    assert float(opt.eta) == pytest.approx(eta, rel=1e-12)
    for p, w, (_, (_, _, _, bound)) in zip(params, before, cases):
        c = eta / L * agd_ops.scale_of(p) / bound
        want = w - (c.reshape(1, 1, *p.shape[2:]) if p.dim() == 4 else c) * p.grad
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)


def test_zero_gradient_gives_zero_step_and_keeps_u_v():
    model = fcn()
    opt = hf.AGD(model.parameters(), norm="spectral")
    x, y = data(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    first = list(model.parameters())[0]
    u, v = opt.state[first]["u"].clone(), opt.state[first]["v"].clone()
    before = first.detach().clone()
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    first.grad.zero_()
    opt.step()
    assert torch.equal(first, before)
    assert torch.equal(opt.state[first]["u"], u) and torch.equal(opt.state[first]["v"], v)


def test_tensors_without_gradient_are_not_updated_and_add_nothing():
    model = fcn(depth=3)
    p0, p1, p2 = list(model.parameters())
    opt = hf.AGD(model.parameters())
    x, y = data(1)[0]
    nn.functional.cross_entropy(model(x), y).backward()
    p1.grad = None
    before = p1.detach().clone()
    grads = [p0.grad.clone(), p2.grad.clone()]
    opt.step()
    assert torch.equal(p1, before)
    G = sum(agd_ops.scale_of(p) * float(g.norm()) for p, g in zip((p0, p2), grads)) / 3    # L counts all three
    assert float(opt.eta) == pytest.approx(math.log((1 + math.sqrt(1 + 4 * G)) / 2), rel=1e-12)


@pytest.mark.parametrize("shape", [(5,), (3, 4, 5), (2, 3, 4, 5, 6)])
def test_non_matrix_parameters_are_refused(shape):
    with pytest.raises(ValueError, match=r"matrices and 4-D convolution kernels; got a parameter of shape "
                                         + re.escape(str(shape))):
        hf.AGD([nn.Parameter(torch.zeros(shape))])


def test_bad_options():
    w = [nn.Parameter(torch.zeros(3, 3))]
    with pytest.raises(ValueError, match="norm must be"):
        hf.AGD(w, norm="nuclear")
    with pytest.raises(ValueError, match="gain must be"):
        hf.AGD(w, gain=-1)
    if hf.ops.cuda_extension_available():
        with pytest.raises(ValueError, match="backend='cuda' runs on CUDA tensors"):
            hf.AGD(w, backend="cuda")
    else:
        with pytest.raises(NotImplementedError, match="backend='cuda' needs the CUDA extension"):
            hf.AGD(w, backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        hf.AGD(w, backend="tpu")


def test_init_weights_is_scaled_orthogonal_per_slice():
    model = cnn(dtype=torch.float64)
    opt = hf.AGD(model.parameters())
    opt.init_weights(generator=torch.Generator().manual_seed(0))
    for p in model.parameters():
        s = agd_ops.scale_of(p)
        for w in agd_ops.as_slices(p.detach()):
            m, n = w.shape
            gram = w @ w.T if m <= n else w.T @ w
            torch.testing.assert_close(gram, s * s * torch.eye(min(m, n), dtype=w.dtype), atol=1e-10, rtol=0)


def test_power_iteration_mixed_shapes_to_a_tolerance():
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(3, 20, 30, generator=g, dtype=torch.float64), torch.randn(50, 10, generator=g, dtype=torch.float64),
            torch.zeros(4, 4, dtype=torch.float64)]
    us = [torch.nn.functional.normalize(torch.randn(3, 20, generator=g, dtype=torch.float64), dim=1),
          torch.nn.functional.normalize(torch.randn(50, generator=g, dtype=torch.float64), dim=0),
          torch.nn.functional.normalize(torch.ones(4, dtype=torch.float64), dim=0)]
    vs = [torch.nn.functional.normalize(torch.randn(3, 30, generator=g, dtype=torch.float64), dim=1),
          torch.nn.functional.normalize(torch.randn(10, generator=g, dtype=torch.float64), dim=0),
          torch.nn.functional.normalize(torch.ones(4, dtype=torch.float64), dim=0)]
    sig, u2, v2, iters = hf.ops.power_iteration(mats, us, vs, tol=1e-9, max_iter=500)
    exact = [torch.linalg.matrix_norm(m, ord=2) for m in mats[:2]]
    for s, e in zip(sig[:2], exact):
        assert torch.allclose(s, e, rtol=1e-3)
    assert float(sig[2]) == 0.0 and torch.equal(u2[2], us[2])
    # warm start: from the converged vectors, one or two iterations suffice
    _, _, _, iters_warm = hf.ops.power_iteration(mats, u2, v2, tol=1e-9, max_iter=500)
    assert max(iters_warm[:2]) <= 2 < max(iters[:2])


import re  # noqa: E402  (used in a parametrised match above)


@pytest.mark.parametrize("net", ["fcn", "cnn"])
def test_fused_spectral_pass_matches_the_batched_reference(net):
    make = fcn if net == "fcn" else cnn
    a, b = make(dtype=torch.float32), make(dtype=torch.float32)
    oa = hf.AGD(a.parameters(), norm="spectral", backend="cpu", tol=1e-7, max_iter=200)
    ob = hf.AGD(b.parameters(), norm="spectral", backend="reference", tol=1e-7, max_iter=200)
    for x, y in data(4, dtype=torch.float32):
        for m, o in ((a, oa), (b, ob)):
            m.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert float((p - q).norm() / q.norm()) <= 1e-4
    assert float(oa.eta) == pytest.approx(float(ob.eta), rel=1e-4)


def _rows_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64),
          torch.randn(1, 300, generator=g, dtype=torch.float64), torch.randn(2, 1, generator=g, dtype=torch.float64)]
    xs[1][4].zero_()                       # a zero row keeps its destination
    dsts = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in xs]
    return xs, dsts


@pytest.mark.parametrize("how", ["compiled", "pytorch", "triton"])
def test_normalize_rows_writes_unit_rows_and_keeps_zero_rows(how, monkeypatch):
    xs, dsts = _rows_case()
    before = [d.clone() for d in dsts]
    if how == "triton":
        pytest.importorskip("triton")
        from hyperfused.ops.triton import agd as tri
        if torch.cuda.is_available():       # the Triton kernels run on CUDA tensors there (no interpreter)
            xs, dsts, before = ([t.cuda() for t in ts] for ts in (xs, dsts, before))
        norms = tri.agd_normalize_rows(xs, dsts)
    else:
        if how == "pytorch":
            monkeypatch.setattr(agd_ops, "_compiled_for", lambda tensors: False)
        elif not hf.ops.extension_available():
            pytest.skip("the C++ extension is not built")
        norms = agd_ops.normalize_rows_(xs, dsts)
    want = torch.cat([x.norm(dim=1) for x in xs])
    torch.testing.assert_close(norms, want, rtol=1e-15, atol=0)
    for x, d, b in zip(xs, dsts, before):
        n = x.norm(dim=1, keepdim=True)
        expect = torch.where(n > 0, x / torch.where(n > 0, n, 1), b)
        torch.testing.assert_close(d, expect, rtol=1e-15, atol=1e-16)
    assert torch.equal(dsts[1][4], before[1][4])


def test_normalize_rows_refuses_mismatched_arguments():
    xs, dsts = _rows_case()
    with pytest.raises((ValueError, RuntimeError), match="destination"):
        agd_ops.normalize_rows_(xs, dsts[:-1] + [torch.zeros(3, dtype=torch.float64)])
    with pytest.raises((ValueError, RuntimeError), match="float64"):
        agd_ops.normalize_rows_([x.float() for x in xs], dsts)
    with pytest.raises(ValueError, match="destinations"):
        agd_ops.normalize_rows_(xs, dsts[:2])


def test_spectral_state_loaded_into_float32_weights_resumes():
    """torch casts loaded state to the weights' dtype; the power iteration's vectors are brought back to
    float64, and training continues as if uninterrupted."""
    model = fcn(dtype=torch.float32)
    opt = hf.AGD(model.parameters(), norm="spectral")
    batches = data(4, dtype=torch.float32)
    for x, y in batches[:2]:
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    clone = fcn(dtype=torch.float32)
    clone.load_state_dict(model.state_dict())
    opt2 = hf.AGD(clone.parameters(), norm="spectral")
    opt2.load_state_dict(opt.state_dict())
    for x, y in batches[2:]:
        for m, o in ((model, opt), (clone, opt2)):
            m.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert all(opt2.state[p]["u"].dtype == torch.float64 for p in clone.parameters())


def test_agd_runs_its_passes_through_the_backend_objects(monkeypatch):
    """AGD holds no backend branches: its sums of squares, power-iteration passes and update are the backend
    objects' calls (hyperfused.ops.backends), like the hypergradient optimizers'."""
    from hyperfused import ops as hf_ops
    calls = []
    for name in ("reference", "cpu"):
        b = hf_ops.backends.get(name)
        for m in ("agd_sumsq", "agd_update", "agd_power_kernels"):
            orig = getattr(b, m)
            monkeypatch.setattr(b, m, (lambda orig, name, m: lambda *a, **k: (calls.append((name, m)),
                                                                                orig(*a, **k))[1])(orig, name, m))
    for backend, norm in (("reference", "frobenius"), ("reference", "spectral"), ("cpu", "frobenius"),
                          ("cpu", "spectral")):
        calls.clear()
        model = fcn()
        opt = hf.AGD(model.parameters(), norm=norm, backend=backend)
        x, y = data(1)[0]
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        want = {(backend, "agd_update")}
        want |= {(backend, "agd_sumsq")} if norm == "frobenius" else {(backend, "agd_power_kernels")}
        assert want <= set(calls), (backend, norm, calls)
        assert {n for n, _ in calls} == {backend}
