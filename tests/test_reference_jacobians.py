"""The closed-form Jacobians (rebuilt from stored state, docs/MATH.md §4) against autograd on the update itself.

For every kind and every subset of learned hyperparameters, including those the paper's package lacks (Adam
learning beta1 only, momentum SGD learning lr only...): take a state after a few updates, differentiate one
more update with respect to the raw hyperparameters with torch.func, contract with the next gradient, and
compare with ``reference.hyper_reduce`` on the state that update left behind.
"""
import itertools

import pytest
import torch

from hyperfused.ops import reference as ref

CONFIGS = {
    "sgd": ({"momentum": False}, {"lr": 0.1, "momentum": 0.0}),
    "sgd_m": ({"momentum": True}, {"lr": 0.1, "momentum": 0.8}),
    "sgd_nesterov": ({"momentum": True, "nesterov": 1.0, "dampening": 0.0}, {"lr": 0.1, "momentum": 0.8}),
    "sgd_dampening": ({"momentum": True, "nesterov": 0.0, "dampening": 0.3}, {"lr": 0.1, "momentum": 0.8}),
    "adagrad": ({"eps": 1e-10, "initial_accumulator_value": 0.1}, {"lr": 0.05}),
    "rmsprop": ({"eps": 1e-8}, {"lr": 0.01, "alpha": 0.9}),
    "adam": ({"eps": 1e-8}, {"lr": 0.01, "beta1": 0.8, "beta2": 0.95}),
}
NAMES = {"sgd": ("lr",), "sgd_m": ("lr", "momentum"), "sgd_nesterov": ("lr", "momentum"),
         "sgd_dampening": ("lr", "momentum"), "adagrad": ("lr",), "rmsprop": ("lr", "alpha"),
         "adam": ("lr", "beta1", "beta2")}


def _cases():
    for key, names in NAMES.items():
        for r in range(1, len(names) + 1):
            for learned in itertools.combinations(names, r):
                for prior_steps in (0, 3):
                    yield key, learned, prior_steps


@pytest.mark.parametrize("key,learned,prior_steps", list(_cases()))
def test_closed_form_matches_autograd(key, learned, prior_steps):
    kind = "sgd" if key.startswith("sgd") else key
    cfg, values = CONFIGS[key]
    torch.manual_seed(0)
    dt = torch.float64
    x = torch.randn(5, 7, dtype=dt)
    st = ref.KINDS[kind][0](x, cfg, learned)
    raw = {n: ref.to_raw(kind, n, torch.tensor(values[n], dtype=dt)) for n in learned}

    def vals_of(raw_):
        out = {n: torch.tensor(v, dtype=dt) for n, v in values.items()}
        for n in learned:
            out[n] = ref.to_value(kind, n, raw_[n])
        return out

    for _ in range(prior_steps):      # some history, with fixed hyperparameters
        x, st = ref.KINDS[kind][1](x, torch.randn_like(x), st, vals_of(raw), cfg, learned)
    g = torch.randn_like(x)
    g_next = torch.randn_like(x)

    def one_update(*raw_vals):
        r = dict(zip(learned, raw_vals))
        xn, _ = ref.KINDS[kind][1](x, g, st, vals_of(r), cfg, learned)
        return xn

    primals = tuple(raw[n] for n in learned)
    _, vjp = torch.func.vjp(one_update, *primals)
    expected = dict(zip(learned, vjp(g_next)))

    xn, st_new = ref.KINDS[kind][1](x, g, st, vals_of(raw), cfg, learned)
    delta, finite = ref.hyper_reduce(kind, cfg, learned, False, [g_next], [st_new],
                                     [torch.tensor(True)], vals_of(raw), raw)
    assert bool(finite)
    for n in learned:
        e = expected[n]
        assert torch.allclose(delta[n], e, rtol=1e-10, atol=1e-12 * max(1.0, float(e.abs()))), \
            f"{key} d/d{n}: closed form {float(delta[n])!r} autograd {float(e)!r}"


def test_not_moved_gives_zero_jacobian():
    cfg, values = CONFIGS["adam"]
    x = torch.randn(4, dtype=torch.float64)
    st = ref.init_state("adam", x, cfg, ("lr",))
    hp = {n: torch.tensor(v, dtype=torch.float64) for n, v in values.items()}
    _, st = ref.adam_update(x, torch.randn(4, dtype=torch.float64), st, hp, cfg, ("lr",))
    delta, _ = ref.hyper_reduce("adam", cfg, ("lr",), False, [torch.randn(4, dtype=torch.float64)], [st],
                                [torch.tensor(False)], hp, hp)
    assert float(delta["lr"]) == 0.0


def test_adam_beta2_guard_where_v_underflowed():
    cfg = {"eps": 0.0}
    x = torch.zeros(3, dtype=torch.float64)
    learned = ("lr", "beta2")
    st = ref.init_state("adam", x, cfg, learned)        # v_0 = eps = 0: S stays 0 for a zero gradient
    hp = {"lr": torch.tensor(0.1, dtype=torch.float64), "beta1": torch.tensor(0.9, dtype=torch.float64),
          "beta2": torch.tensor(0.99, dtype=torch.float64)}
    raw = {"lr": hp["lr"], "beta2": ref.sigma_inv(hp["beta2"])}
    g = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64)
    _, st = ref.adam_update(x, g, st, hp, cfg, learned)
    J = ref.adam_jac(st, hp, raw, cfg, learned)
    assert torch.isfinite(J["beta2"]).all() and float(J["beta2"][0]) == 0.0


def _backends():
    from optim_infos import backends
    return backends()


@pytest.mark.parametrize("one_pass", [False, True], ids=["exact", "one-pass"])
@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_adam_beta_jacobians_of_the_first_update_are_exact_zeros(dtype, backend, one_pass):
    """mh_1 = g whatever beta1, and vh_1 = g^2 whatever beta2 when v starts at 0: the hypergradient of the second
    step leaves both betas bitwise as they were (not round-off, which an Adam or Lion level above would turn into
    full steps); with v_0 > 0 (the paper starts at eps) beta2 has a true Jacobian and moves; from the third step
    both move."""
    import hyperfused as hf
    for v0, beta2_moves in ((0.0, False), (0.1, True)):
        g = torch.Generator().manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(5, 7, generator=g, dtype=torch.float64).to(dtype))]
        # Lion above: its step is sign(delta) lr, so any round-off left in delta would move the betas by 1e-3
        opt = hf.Adam(ps, lr=1e-2, initial_exp_avg_sq=v0, hyper=hf.Lion(lr=1e-3), backend=backend, one_pass=one_pass)
        b1, b2 = opt.hyperparameters()["beta1"], opt.hyperparameters()["beta2"]
        seen = []
        for t in range(3):
            ps[0].grad = torch.randn(5, 7, generator=g, dtype=torch.float64).to(dtype)
            opt.step()
            h = opt.hyperparameters()
            seen.append((h["beta1"], h["beta2"]))
        assert seen[1][0] == b1, (backend, seen)
        assert (seen[1][1] != b2) == beta2_moves, (backend, v0, seen)
        assert seen[2][0] != b1 and seen[2][1] != b2, seen
