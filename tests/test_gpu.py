"""The optimizers' contract on CUDA tensors, on each GPU backend: training against the reference backend,
checkpoints, GradScaler, faults, parameters without gradient, no host synchronisation in step(), CUDA-graph
capture, and AGD against the authors' algorithm and exact spectral norms. Skipped without a GPU (the same
contracts are tested on CPU tensors in test_optim_api.py and test_agd.py); bench/gpu/run.sh runs it on one."""
import copy
import io

import pytest
import torch
import torch.nn as nn

import hyperfused as hf
from hyperfused import ops

import test_agd
from test_optim_api import _assert_same, _snapshot, check_resume_is_bitwise

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _gpu_backends():
    out = []
    if ops.cuda_extension_available():
        out.append("cuda")
    if ops.triton_available():
        out.append("triton")
    return out


BACKENDS = _gpu_backends() if torch.cuda.is_available() else ["cuda", "triton"]

TOWERS = {
    "adam/sgd/adam": lambda p, b, o: hf.Adam(p, lr=1e-2, hyper=hf.SGD(lr=1e-4, hyper=hf.Adam(lr=1e-3)), backend=b,
                                             one_pass=o),
    "sgd(m)/sgd per-tensor": lambda p, b, o: hf.SGD(p, lr=0.1, momentum=0.9, hyper=hf.SGD(lr=1e-3, per_tensor=True),
                                                    backend=b, one_pass=o),
    "rmsprop per-tensor/adagrad": lambda p, b, o: hf.RMSprop(p, per_tensor=True, hyper=hf.Adagrad(lr=1e-3),
                                                             backend=b, one_pass=o),
    "adagrad/rmsprop": lambda p, b, o: hf.Adagrad(p, lr=0.1, hyper=hf.RMSprop(lr=1e-4), backend=b, one_pass=o),
    "adam plain": lambda p, b, o: hf.Adam(p, lr=1e-2, backend=b),
}


def _model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype).cuda()


def _data(n, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g).to(dtype).cuda(), torch.randint(0, 3, (16,), generator=g).cuda())
            for _ in range(n)]


def _train(model, opt, data, scaler=None):
    for x, y in data:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _flat_hypers(opt):
    return [float(v) for lv in opt.levels for val in lv.hyperparameters().values()
            for v in (val if isinstance(val, list) else [val])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("name", list(TOWERS))
def test_training_on_cuda_matches_the_reference_backend(name, one_pass, backend):
    """A model trained on CUDA tensors by a GPU backend follows the reference backend (pure PyTorch, the
    oracle) on the same tensors: weights and every level's hyperparameters."""
    data = _data(12)
    m_ref, m = _model(), _model()
    o_ref, o = TOWERS[name](m_ref.parameters(), "reference", one_pass), TOWERS[name](m.parameters(), backend,
                                                                                     one_pass)
    assert o._group_backend(o.param_groups[0]) == backend
    _train(m_ref, o_ref, data)
    _train(m, o, data)
    for a, b in zip(m.parameters(), m_ref.parameters()):
        assert _rel(a.detach(), b.detach()) <= 1e-5
    for a, b in zip(_flat_hypers(o), _flat_hypers(o_ref)):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-12)
    assert o.skipped_steps == o_ref.skipped_steps == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["adam/sgd/adam", "sgd(m)/sgd per-tensor", "rmsprop per-tensor/adagrad"])
def test_resume_from_a_checkpoint_on_cuda_is_bitwise_identical(name, dtype, backend):
    opt2 = check_resume_is_bitwise(lambda p: TOWERS[name](p, backend, False), lambda seed: _model(dtype, seed),
                                   _data(16, dtype))
    assert all(v.is_cuda for st in opt2.state.values() for v in st.values()
               if isinstance(v, torch.Tensor) and v.dim() > 0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
def test_grad_scaler_on_cuda(one_pass, backend):
    """torch.amp.GradScaler("cuda") hands over grad_scale and found_inf; the kernels unscale as they read:
    training equals unscaled training bitwise (a power-of-two scale), an overflow is skipped, .grad stays
    scaled."""
    data = _data(6)
    m1, m2 = _model(), _model()
    o1 = hf.Adam(m1.parameters(), lr=1e-2, hyper=hf.SGD(lr=1e-3), one_pass=one_pass, backend=backend)
    o2 = hf.Adam(m2.parameters(), lr=1e-2, hyper=hf.SGD(lr=1e-3), one_pass=one_pass, backend=backend)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 10)
    _train(m1, o1, data)
    _train(m2, o2, data, scaler)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert o1.hyperparameters() == o2.hyperparameters()
    o2.zero_grad()
    scaler.scale(nn.functional.cross_entropy(m2(data[0][0]), data[0][1])).backward()
    g_scaled = m2[0].weight.grad.clone()
    m1.zero_grad()
    nn.functional.cross_entropy(m1(data[0][0]), data[0][1]).backward()
    assert torch.equal(g_scaled, m1[0].weight.grad * 2.0 ** 10)
    m2[0].weight.grad[0, 0] = float("inf")
    before = [p.detach().clone() for p in m2.parameters()]
    scale = scaler.get_scale()
    scaler.step(o2)
    scaler.update()
    assert all(torch.equal(p, b) for p, b in zip(m2.parameters(), before))
    assert o2.skipped_steps == 1 and scaler.get_scale() < scale


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam/sgd/adam", "sgd(m)/sgd per-tensor", "adam plain"])
def test_non_finite_gradient_skips_the_whole_step_on_cuda(name, backend):
    m = _model()
    opt = TOWERS[name](m.parameters(), backend, False)
    data = _data(8)
    _train(m, opt, data[:4])
    before = _snapshot(m, opt)
    hyper_before = [lv.hyperparameters() for lv in opt.levels]
    opt.zero_grad()
    nn.functional.cross_entropy(m(data[4][0]), data[4][1]).backward()
    m[2].weight.grad[0, 0] = float("nan")
    opt.step()
    _assert_same(_snapshot(m, opt), before)
    assert [lv.hyperparameters() for lv in opt.levels] == hyper_before
    assert opt.skipped_steps == 1
    _train(m, opt, data[5:])
    assert opt.skipped_steps == 1 and all(torch.isfinite(p).all() for p in m.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameters_without_gradient_are_left_alone_on_cuda(backend):
    torch.manual_seed(0)
    a, b = (torch.nn.Parameter(torch.randn(3, device="cuda")) for _ in range(2))
    opt = hf.SGD([a, b], lr=0.1, per_tensor=True, hyper=hf.SGD(lr=0.5), backend=backend)
    for _ in range(2):
        a.grad, b.grad = torch.randn(3, device="cuda"), torch.randn(3, device="cuda")
        opt.step()
    lr_a, a_before = opt.hyperparameters()["lr"][0], a.detach().clone()
    a.grad, b.grad = None, torch.randn(3, device="cuda")
    opt.step()
    assert torch.equal(a, a_before) and opt.hyperparameters()["lr"][0] == lr_a
    a.grad = torch.randn(3, device="cuda")
    opt.step()                                       # a did not move last step: no hypergradient from it
    assert opt.hyperparameters()["lr"][0] == lr_a
    a.grad = torch.randn(3, device="cuda")
    opt.step()
    assert opt.hyperparameters()["lr"][0] != lr_a


@pytest.mark.parametrize("backend", BACKENDS)
def test_param_groups_learn_their_own_lr_on_cuda(backend):
    m = _model()
    opt = hf.Adam([{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 3e-3}], lr=1e-2,
                  hyper=hf.SGD(lr=1e-4), backend=backend)
    m_ref = _model()
    ref = hf.Adam([{"params": m_ref[0].parameters()}, {"params": m_ref[2].parameters(), "lr": 3e-3}], lr=1e-2,
                  hyper=hf.SGD(lr=1e-4), backend="reference")
    data = _data(8)
    _train(m, opt, data)
    _train(m_ref, ref, data)
    for g in range(2):
        for k, v in ref.hyperparameters(group=g).items():
            assert opt.hyperparameters(group=g)[k] == pytest.approx(v, rel=1e-5)
    assert opt.hyperparameters(group=0)["lr"] != opt.hyperparameters(group=1)["lr"]


def _no_sync(step):
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("name", list(TOWERS))
def test_step_does_not_synchronise_with_the_host(name, one_pass, backend):
    m = _model()
    opt = TOWERS[name](m.parameters(), backend, one_pass)
    data = _data(3)
    _train(m, opt, data[:2])
    opt.zero_grad()
    nn.functional.cross_entropy(m(data[2][0]), data[2][1]).backward()
    _no_sync(opt.step)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frobenius_agd_step_does_not_synchronise_with_the_host(backend):
    net = test_agd.fcn(dtype=torch.float32).cuda()
    opt = hf.AGD(net.parameters(), backend=backend)
    (x, y), = test_agd.data(1, dtype=torch.float32)
    nn.functional.cross_entropy(net(x.cuda()), y.cuda()).backward()
    opt.step()
    _no_sync(opt.step)


def _graph_run(name, backend):
    """(params, optimizer) of a tower on three small CUDA tensors whose gradients are filled in place (a captured
    step reads them where they are)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(*s, generator=g) * 0.5).cuda()) for s in [(7,), (4097,), (3, 5)]]
    for p in params:
        p.grad = torch.zeros_like(p)
    return params, TOWERS[name](params, backend, False)


def _graph_grads(t, params):
    gg = torch.Generator().manual_seed(100 + t)
    for p in params:
        p.grad.copy_((torch.randn(p.shape, generator=gg).cuda() + 0.3 * p.detach()) * 0.1)


def _eager_and_warmed(name, backend):
    """Two equal runs, each stepped three times on a side stream (the warm-up torch.cuda.graph asks for)."""
    runs = [_graph_run(name, backend), _graph_run(name, backend)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for t in range(3):
            for params, opt in runs:
                _graph_grads(t, params)
                opt.step()
    torch.cuda.current_stream().wait_stream(side)
    return runs


def _replay_against_eager(runs, graph, steps):
    (p_eager, o_eager), (p_graph, o_graph) = runs
    for t in range(3, 3 + steps):
        _graph_grads(t, p_eager)
        o_eager.step()
        _graph_grads(t, p_graph)
        graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(p_graph, p_eager):
        assert torch.equal(a, b)
    assert [lv.hyperparameters() for lv in o_graph.levels] == [lv.hyperparameters() for lv in o_eager.levels]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam/sgd/adam", "sgd(m)/sgd per-tensor", "adagrad/rmsprop"])
def test_captured_step_replays_the_eager_trajectory_bitwise(name, backend):
    runs = _eager_and_warmed(name, backend)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        runs[1][1].step()
    _replay_against_eager(runs, graph, 6)


def test_a_second_capture_of_the_same_step_replays_without_the_first():
    """A capture records the upload of its CUDA tables, which runs only when that graph replays: a second capture of
    the same step (torch.cuda.graph's shared capture stream, the same tensors) must not take the first one's table,
    or its replays read a table that was never written. Two graphs captured, only the second replayed: the eager
    trajectory bit for bit."""
    runs = _eager_and_warmed("adam/sgd/adam", "cuda")
    first, second = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(first):
        runs[1][1].step()
    with torch.cuda.graph(second):
        runs[1][1].step()
    _replay_against_eager(runs, second, 4)


# ------------------------------------------------------------------------------------------- AGD
@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
@pytest.mark.parametrize("net", ["fcn", "cnn"])
def test_frobenius_agd_on_cuda_reproduces_the_authors_algorithm(net, backend):
    test_agd.check_frobenius_against_the_authors(test_agd.fcn if net == "fcn" else test_agd.cnn, backend, "cuda")


@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
@pytest.mark.parametrize("net", ["fcn", "cnn"])
def test_spectral_agd_on_cuda_matches_exact_spectral_norms(net, backend):
    test_agd.check_spectral_against_exact_norms(test_agd.fcn if net == "fcn" else test_agd.cnn, backend, "cuda")


@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
@pytest.mark.parametrize("norm", ["frobenius", "spectral"])
def test_agd_gain_on_cuda_multiplies_every_step_as_in_the_authors_algorithm(norm, backend):
    check = (test_agd.check_frobenius_against_the_authors if norm == "frobenius" else
             test_agd.check_spectral_against_exact_norms)
    check(test_agd.cnn, backend, "cuda", gain=2.0)


@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
def test_spectral_agd_on_cuda_steps_with_the_clamped_sigma(backend):
    test_agd.check_spectral_clamp(backend, "cuda")


def test_state_dict_of_a_cuda_run_loads_into_a_cpu_run():
    """A checkpoint taken on the GPU resumes on CPU tensors (map_location='cpu') and continues to the same
    result as the GPU run, within float32 round-off."""
    if "cuda" not in BACKENDS:
        pytest.skip("the CUDA extension is not built")
    data = _data(12)
    m = _model()
    opt = TOWERS["adam/sgd/adam"](m.parameters(), "cuda", False)
    _train(m, opt, data[:6])
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, buf)
    _train(m, opt, data[6:])
    buf.seek(0)
    ckpt = torch.load(buf, map_location="cpu")
    m2 = _model().cpu()
    m2.load_state_dict(ckpt["model"])
    opt2 = TOWERS["adam/sgd/adam"](m2.parameters(), "auto", False)
    opt2.load_state_dict(copy.deepcopy(ckpt["opt"]))
    _train(m2, opt2, [(x.cpu(), y.cpu()) for x, y in data[6:]])
    for p, q in zip(m.parameters(), m2.parameters()):
        assert _rel(q.detach(), p.detach().cpu()) <= 1e-5
