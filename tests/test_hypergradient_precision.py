"""Hypergradients in every dtype against a float64 oracle, on every backend, with dtype-derived tolerances.

What this guards. The kernel tests of the backends (test_cpu_kernels.py, test_triton_kernels.py,
test_cuda_kernels.py) compare parameters after a few steps with the level above at lr 1e-7 and tolerances
like 2e-2: in bfloat16, float16 and float32 a wrong hypergradient (a sign error in Adam's beta2 Jacobian, say)
moves nothing they look at. Here the hypergradients themselves are compared:

* ``test_hypergradient_matches_float64_oracle``: pass A of the op layer (``ops.hyper_reduce``: sum(g * J) for
  every learned hyperparameter, per tensor for a per-tensor lr) for every optimizer kind and learned subset, on
  random gradients in the target dtype and a realistic state (a few reference updates from the initial state,
  stored in the math dtype the optimizers keep: float32, float64 for float64 parameters) with hyperparameters
  in that math dtype. The oracle is the reference op on the same inputs upcast to float64 (pure PyTorch, held
  to the paper's package and to autograd in float64 by other tests: independent of the kernels' arithmetic).
* ``test_tolerance_sees_a_sign_error``: the power of that comparison. A kernel with the sign of one learned
  hyperparameter's Jacobian flipped returns minus the eager sums; the test requires its error to exceed the
  tolerance POWER times, for every case, dtype and hyperparameter (smallest margin at these seeds: 5.8e3, in
  float32, bfloat16 and float16; over 20 other seeds per case: 50).
* ``test_learned_adam_hyperparameters_track_float64``: the same through the optimizer. hf.Adam (lr 1e-2)
  learning one of lr, beta1, beta2 with hf.SGD above it, on float32, bfloat16 and float16 parameters: each
  step's change of the learned raw hyperparameter (new - old = -hyper_lr * hypergradient: the level above is
  plain SGD) against the same run on float64 copies of the parameters with the same gradients upcast. The
  hyper lr of each name is chosen so that the largest change of a run is 6e4 to 3e6 float32 ulps of the
  stored raw value (hyperparameters are stored in float32 for these dtypes, float64 for float64 parameters).

Tolerance rule (in the spirit of flash-attention's tests: a kernel may be at most a small factor further from
the oracle than plain PyTorch in the same precision, measured on the same inputs):

    |kernel - oracle| <= FACTOR * eager_error + FLOOR_ULPS * u * sum|g * J|

* eager_error: how far plain eager PyTorch in the kernels' math precision lands from the oracle: the reference
  op on the low-precision inputs (which computes in float32, as the kernels do for float32, bfloat16 and float16
  parameters), maximised over evaluations with the hyperparameters (values and raw) nudged by one float32 ulp
  up and down. The nudges make the measure robust: per-tensor scalars such as Adam's bias correction
  1 - beta2^t are computed once per tensor, and their single rounding, amplified by the cancellation in beta2's
  Jacobian (hundreds of times at small t), can make one unnudged eager evaluation luckily accurate where a kernel
  that rounds differently is not (measured over 25 seeds: the C++ kernel's error reached 57x the unnudged eager
  error + u sum|g J|, and at most 0.96x the nudged one + u sum|g J|). For float64
  inputs the eager evaluation *is* the oracle, so the float64 kernels' budget is the eager float32 error on the
  inputs rounded to float32, times u(float64) / u(float32): the same formulas with 2^29 times finer rounding.
  Evaluating the formulas with tensors kept in bfloat16 or float16 is no eager reference here: 0.999 rounds to
  1 in bfloat16, so Adam's 1 - beta2^t is 0, and the kernels promise float32 math for those dtypes.
* u * sum|g * J| (u: the math dtype's machine epsilon, sum|g * J| in float64): a few roundings of the terms, a
  floor for sums whose eager error happens to be ~0 (SGD's J = -buf is exact).
* The optimizer-level test uses the same rule with the reference backend's run as the eager one, errors
  maximised over the steps of a run (a single step's eager error can be luckily small), and a floor of
  FLOOR_ULPS float32 ulps of the stored raw value (the change is read as the difference of two rounded values).

A wrong Jacobian term changes a hypergradient by a fraction of itself, while the tolerance is float32 rounding
amplified by the conditioning: the sign of beta2's Jacobian flipped in the C++ or Triton kernels misses by 5.8e3
to 3.5e4 tolerances here in float32, bfloat16 and float16 (2e4 to 3e4 at the optimizer level), and the correct
kernels use at most 0.29 of it (measured on 20 seeds per case: at most 0.3).

Backends: "reference", "cpu" (C++) and "triton" (under the Triton interpreter on CPU tensors: conftest.py sets
TRITON_INTERPRET=1 without a GPU) on CPU; with CUDA the same tests run on CUDA tensors with "reference",
"cuda" and "triton". A backend that is not available is skipped. For "reference" the first test checks the
harness (its error is the eager error by construction, exactly the oracle in float64). Tensors are tiny (three
of at most 300 elements) because the interpreter is slow.
"""
import functools
import math

import pytest
import torch

import hyperfused as hf
from hyperfused import ops
from hyperfused.ops import reference as ref
from hyperfused.ops import triton as hf_triton

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("reference", "cuda", "triton") if DEV == "cuda" else ("reference", "cpu", "triton")
DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
SIZES = [(5,), (13, 11), (300,)]

FACTOR = 4.0      # a kernel may be this many times further from the oracle than eager PyTorch
FLOOR_ULPS = 2.0  # plus this many roundings of sum|g J| (ops) or of the stored raw value (optimizer)
POWER = 20.0      # a sign error in one Jacobian must miss by at least this many tolerances

ADAM = {"eps": 1e-8}
RMSPROP = {"eps": 1e-8}
ADAGRAD = {"eps": 1e-10, "initial_accumulator_value": 0.1}
# (kind, cfg, learned, per-tensor lr): every kind, the learned subsets, per-tensor lrs
CASES = [
    ("sgd", {"momentum": False}, ("lr",), False),
    ("sgd", {"momentum": False}, ("lr",), True),
    ("sgd", {"momentum": True}, ("lr",), False),
    ("sgd", {"momentum": True}, ("momentum",), False),
    ("sgd", {"momentum": True}, ("lr", "momentum"), False),
    ("adam", ADAM, ("lr",), False),
    ("adam", ADAM, ("beta1",), False),
    ("adam", ADAM, ("beta2",), False),
    ("adam", ADAM, ("lr", "beta2"), False),
    ("adam", ADAM, ("lr", "beta1", "beta2"), False),
    ("adam", ADAM, ("lr", "beta1", "beta2"), True),
    ("rmsprop", RMSPROP, ("lr",), False),
    ("rmsprop", RMSPROP, ("alpha",), False),
    ("rmsprop", RMSPROP, ("lr", "alpha"), True),
    ("adagrad", ADAGRAD, ("lr",), False),
    ("adagrad", ADAGRAD, ("lr",), True),
]
CASE_IDS = [f"{kind}{'-mom' if cfg.get('momentum') else ''}[{','.join(names)}]{'-per' if per else ''}"
            for kind, cfg, names, per in CASES]
# the optimizers' defaults (SGD with a momentum of 0.9 where it has one); learned ones are jittered per seed
VALUES = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999},
          "rmsprop": {"lr": 1e-2, "alpha": 0.99}, "adagrad": {"lr": 0.05}}
# one-ulp nudges of the float32 hyperparameters: a sign per name (sorted), cycled; raw ones get the reverse
NUDGES = [(0,), (1,), (-1,), (1, -1), (-1, 1)]


def _available(backend: str) -> bool:
    if backend == "reference":
        return True
    if backend == "cpu":
        return DEV == "cpu" and ops.extension_available()
    if backend == "cuda":
        return DEV == "cuda" and ops.cuda_extension_available()
    if backend == "triton":
        return ops.triton_available() and (DEV == "cuda" or hf_triton.interpreting())
    return False


def _need(backend: str) -> None:
    if not _available(backend):
        pytest.skip(f"backend {backend!r} is not available here")
    ops.resolve_backend(backend)          # loads the compiled extension the backend needs


def _u(dtype: torch.dtype) -> float:
    """Machine epsilon of the math dtype of ``dtype`` parameters (float32, float64 for float64)."""
    return torch.finfo(ref.math_dtype(dtype)).eps


# --------------------------------------------------------------------------------------------------------
# ops level: pass A
# --------------------------------------------------------------------------------------------------------
def _inputs(case, dtype, seed):
    """Gradients in ``dtype``; states after a few reference updates (2, 4, 6 steps: Adam's per-tensor step
    counts differ), stored in the math dtype; hyperparameter values and raw values in the math dtype."""
    kind, cfg, learned, per = case
    gen = torch.Generator().manual_seed(seed)
    mdt = ref.math_dtype(dtype)
    n = len(SIZES)
    hp, raw = {}, {}
    for name, v in VALUES[kind].items():
        v = torch.tensor(v, dtype=torch.float64)
        if name not in learned:
            hp[name] = v.to(mdt).to(DEV)
            continue
        r = ref.to_raw(kind, name, v) * (1 + 0.1 * torch.randn((), generator=gen, dtype=torch.float64))
        if name == "lr" and per:
            r = r * (1 + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64))
        raw[name] = r.to(mdt).to(DEV)                        # as the optimizers keep them: raw, in the math dtype
        hp[name] = ref.to_value(kind, name, raw[name])       # and the values computed from them in that dtype
    grads, states = [], []
    for i, size in enumerate(SIZES):
        x = torch.randn(size, generator=gen, dtype=torch.float64)
        st = ref.KINDS[kind][0](x, cfg, learned)
        hpi = {k: v.double().cpu() for k, v in ref._tensor_hp(hp, i, per).items()}
        for _ in range(2 + 2 * i):
            g = torch.randn(size, generator=gen, dtype=torch.float64) * (0.5 + i)
            x, st = ref.KINDS[kind][1](x, g, st, hpi, cfg, learned)
        states.append({k: v.to(mdt).to(DEV) for k, v in st.items()})
        grads.append((torch.randn(size, generator=gen, dtype=torch.float64) * (0.5 + i) + 0.2).to(dtype).to(DEV))
    valid = [torch.ones((), dtype=torch.bool, device=DEV) for _ in SIZES]
    return grads, states, valid, hp, raw


def _as(d, dtype):
    return {k: v.to(dtype) for k, v in d.items()}


def _group(case, per_tensor_values):
    """Per-tensor values [n] -> what hyper_reduce returns: the vector for a per-tensor lr, else the sum."""
    _, _, learned, per = case
    return {name: (v if (name == "lr" and per) else v.sum()) for name, v in per_tensor_values.items()}


def _oracle(case, grads, states, hp, raw):
    """(sums, magnitudes) in float64: sum(g J) and sum|g J| with J from the reference on the inputs upcast."""
    kind, cfg, learned, per = case
    jac = ref.KINDS[kind][2]
    hp64, raw64 = _as(hp, torch.float64), _as(raw, torch.float64)
    sums = {name: [] for name in learned}
    mags = {name: [] for name in learned}
    for i, g in enumerate(grads):
        J = jac(_as(states[i], torch.float64), ref._tensor_hp(hp64, i, per), ref._tensor_hp(raw64, i, per), cfg,
                learned)
        for name in learned:
            gj = g.double() * J[name]
            sums[name].append(gj.sum())
            mags[name].append(gj.abs().sum())
    stack = lambda d: {k: torch.stack(v) for k, v in d.items()}     # noqa: E731
    return _group(case, stack(sums)), _group(case, stack(mags))


def _nudge(d, signs):
    out = {}
    for j, name in enumerate(sorted(d)):
        s = signs[j % len(signs)]
        v = d[name]
        out[name] = v if s == 0 else torch.nextafter(v, torch.full_like(v, s * math.inf))
    return out


def _eager_error(case, grads, states, valid, hp, raw, oracle):
    """max over the NUDGES of |reference op in float32 math - oracle|, per returned entry."""
    kind, cfg, learned, per = case
    worst = {name: torch.zeros_like(v) for name, v in oracle.items()}
    for signs in NUDGES:
        d, _ = ref.hyper_reduce(kind, cfg, learned, per, grads, states, valid, _nudge(hp, signs),
                                _nudge(raw, signs[::-1]))
        for name in learned:
            worst[name] = torch.maximum(worst[name], (d[name].double() - oracle[name]).abs())
    return worst


@functools.lru_cache(maxsize=None)
def _budget(ci: int, dtype: torch.dtype):
    """Inputs, oracle and tolerance of case ``ci`` in ``dtype`` (shared by the backends)."""
    case = CASES[ci]
    grads, states, valid, hp, raw = _inputs(case, dtype, seed=ci)
    oracle, mag = _oracle(case, grads, states, hp, raw)
    if dtype == torch.float64:
        # the eager reference in float64 is the oracle: float32 eager error on the rounded inputs, scaled
        f32 = torch.float32
        eager = _eager_error(case, [g.to(f32) for g in grads], [_as(s, f32) for s in states], valid, _as(hp, f32),
                             _as(raw, f32), oracle)
        eager = {k: v * (_u(torch.float64) / _u(torch.float32)) for k, v in eager.items()}
    else:
        eager = _eager_error(case, grads, states, valid, hp, raw, oracle)
    tol = {k: FACTOR * eager[k] + FLOOR_ULPS * _u(dtype) * mag[k] for k in oracle}
    return (grads, states, valid, hp, raw), oracle, tol


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ci", range(len(CASES)), ids=CASE_IDS)
def test_hypergradient_matches_float64_oracle(ci, dtype, backend):
    _need(backend)
    case = CASES[ci]
    kind, cfg, learned, per = case
    (grads, states, valid, hp, raw), oracle, tol = _budget(ci, dtype)
    got, finite = ops.hyper_reduce(backend, kind, cfg, learned, per, grads, states, valid, hp, raw)
    assert bool(finite)
    for name in learned:
        assert got[name].shape == oracle[name].shape, name
        err = (got[name].double() - oracle[name]).abs()
        assert torch.isfinite(err).all() and (err <= tol[name]).all(), (
            f"{backend} {dtype} {CASE_IDS[ci]} d[{name}]: got {got[name].tolist()}, float64 oracle "
            f"{oracle[name].tolist()}: error {err.tolist()} > tolerance {tol[name].tolist()}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ci", range(len(CASES)), ids=CASE_IDS)
def test_tolerance_sees_a_sign_error(ci, dtype):
    """A kernel that flips the sign of one Jacobian (computing sum(g * -J) in the same precision returns minus
    the eager sums) misses the oracle by POWER tolerances at least, in every dtype."""
    case = CASES[ci]
    kind, cfg, learned, per = case
    (grads, states, valid, hp, raw), oracle, tol = _budget(ci, dtype)
    eager, _ = ref.hyper_reduce(kind, cfg, learned, per, grads, states, valid, hp, raw)
    for name in learned:
        miss = (-eager[name].double() - oracle[name]).abs()
        assert (miss >= POWER * tol[name]).all(), (
            f"{dtype} {CASE_IDS[ci]}: a sign error in J_{name} misses by {miss.tolist()}, only "
            f"{(miss / tol[name]).min().item():.3g} tolerances ({tol[name].tolist()})")


# --------------------------------------------------------------------------------------------------------
# optimizer level: the learned hyperparameters' changes
# --------------------------------------------------------------------------------------------------------
STEPS = 6
# hyper lr per learned name: changes of ~1e-3 to 3e-2 in the raw value, 1e4 to 1e6 float32 ulps of it
HYPER_LR = {"lr": 1e-4, "beta1": 1e-2, "beta2": 1e-1}


def _adam_run(name: str, dtype: torch.dtype, backend: str, grad_dtype: torch.dtype):
    """Per-step changes (float64 list) of the learned raw hyperparameter ``name`` and the largest |raw| seen,
    for hf.Adam(lr=1e-2, learn=(name,), hyper=hf.SGD(HYPER_LR[name])) on ``dtype`` parameters; the gradients
    are a fixed sequence rounded to ``grad_dtype`` (the low-precision run's), then cast to ``dtype``."""
    gen = torch.Generator().manual_seed(7)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(grad_dtype).to(dtype).to(DEV))
              for s in SIZES]
    grads = [[(torch.randn(s, generator=gen, dtype=torch.float64) * (0.5 + i) + 0.1).to(grad_dtype)
              for i, s in enumerate(SIZES)] for _ in range(STEPS)]
    opt = hf.Adam(params, lr=1e-2, learn=(name,), hyper=hf.SGD(lr=HYPER_LR[name]), backend=backend)
    opt.init_state()

    def raw():          # level 0's learned raw value, where checkpoints find it (README: opt.state["hyperfused"])
        return opt.state["hyperfused"]["groups"][0]["levels"][0]["hp"][name]

    assert raw().dtype == ref.math_dtype(dtype)
    deltas, biggest = [], abs(raw().item())
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.to(dtype).to(DEV)
        old = raw().item()
        opt.step()
        new = raw().item()
        deltas.append(new - old)
        biggest = max(biggest, abs(new))
    assert opt.skipped_steps == 0
    return deltas, biggest


@functools.lru_cache(maxsize=None)
def _adam_budget(name: str, dtype: torch.dtype):
    """(float64 oracle's changes, tolerance): the eager run is the reference backend on ``dtype`` parameters."""
    oracle, _ = _adam_run(name, torch.float64, "reference", dtype)
    eager, biggest = _adam_run(name, dtype, "reference", dtype)
    eager_err = max(abs(a - b) for a, b in zip(eager, oracle))
    ulp = math.ulp(float(torch.tensor(biggest, dtype=torch.float32)))      # of the stored float32 raw value
    return oracle, FACTOR * eager_err + FLOOR_ULPS * ulp


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(HYPER_LR))
def test_learned_adam_hyperparameters_track_float64(name, dtype, backend):
    _need(backend)
    oracle, tol = _adam_budget(name, dtype)
    got, _ = _adam_run(name, dtype, backend, dtype)
    err = max(abs(a - b) for a, b in zip(got, oracle))
    assert err <= tol, (f"{backend} {dtype} Adam learning {name}: changes {got}, float64 {oracle}: error {err:.3g} > "
                        f"tolerance {tol:.3g}")
    # the power of the check: a sign error in J_name (the changes negated) misses by POWER tolerances
    assert 2 * max(abs(b) for b in oracle) >= POWER * tol, (oracle, tol)
