"""hyperfused's towers against the paper's own package (gradient-descent-the-ultimate-optimizer), side by side.

Same model, same initial weights, same batches, 20 steps: weights and every level's learned hyperparameters
agree to 1e-9 relative in float64 and 1e-4 in float32.
"""
import pytest
import torch

import towers
from towers import rel_err

pytestmark = pytest.mark.skipif(towers.gdtuo is None, reason="the paper's package is a test dependency")

# level-0 configurations with one level above (the package's classes)
HEIGHT1 = {
    "sgd/sgd": [("sgd", {"lr": 0.1}), ("sgd", {"lr": 0.01})],
    "sgd(momentum)/sgd": [("sgd", {"lr": 0.05, "momentum": 0.9}), ("sgd", {"lr": 0.003})],
    "sgdperparam/sgd": [("sgd_per", {"lr": 0.1}), ("sgd", {"lr": 0.01})],
    "adagrad/sgd": [("adagrad", {"lr": 0.05}), ("sgd", {"lr": 0.01})],
    "rmsprop/sgd": [("rmsprop", {"lr": 0.01}), ("sgd", {"lr": 1e-3})],
    "rmspropalpha/sgd": [("rmsprop_lr", {"lr": 0.01, "alpha": 0.9}), ("sgd", {"lr": 1e-3})],
    "adam/sgd": [("adam", {"lr": 0.01}), ("sgd", {"lr": 1e-3})],
    "adambaydin/sgd": [("adam_lr", {"lr": 0.01, "betas": (0.8, 0.99)}), ("sgd", {"lr": 1e-3})],
}
# taller towers mixing kinds at every level (heights 2 to 4)
TALL = {
    "adam/adam": [("adam", {"lr": 0.01}), ("adam", {"lr": 1e-3})],
    "rmsprop/sgdperparam/sgd": [("rmsprop", {"lr": 0.01}), ("sgd_per", {"lr": 1e-3}), ("sgd", {"lr": 1e-3})],
    "adagrad/rmsprop/adam": [("adagrad", {"lr": 0.05}), ("rmsprop", {"lr": 1e-4}), ("adam", {"lr": 1e-3})],
    "sgd(m)/adam/adagrad/sgd": [("sgd", {"lr": 0.05, "momentum": 0.5}), ("adam", {"lr": 1e-3}),
                                ("adagrad", {"lr": 1e-3}), ("sgd", {"lr": 1e-2})],
    "adambaydin/rmspropalpha/sgd(m)/sgdperparam/sgd": [
        ("adam_lr", {"lr": 0.01}), ("rmsprop_lr", {"lr": 1e-4}), ("sgd", {"lr": 1e-3, "momentum": 0.5}),
        ("sgd_per", {"lr": 1e-3}), ("sgd", {"lr": 1e-2})],
    "adam/rmsprop/sgdperparam/adagrad/sgd": [
        ("adam", {"lr": 0.01}), ("rmsprop", {"lr": 1e-4}), ("sgd_per", {"lr": 1e-3}),
        ("adagrad", {"lr": 1e-3}), ("sgd", {"lr": 1e-2})],
}


def _compare(tower, model_kind, dtype, tol, backend="auto"):
    rw, ow, rl, ol, opt = towers.run_both(tower, model_kind, steps=20, dtype=dtype, backend=backend)
    for i, (o, r) in enumerate(zip(ow, rw)):
        assert o.dtype == dtype
        assert rel_err(o, r) <= tol, f"weight {i}: relative error {rel_err(o, r):.3e}"
    assert len(ol) == len(tower)
    moved = False
    for k in range(len(tower)):
        for name, ref_val in rl[k].items():
            err = rel_err(ol[k][name], ref_val)
            assert err <= tol, f"level {k} {name}: ours {ol[k][name]} package {ref_val} (rel {err:.3e})"
        # the hyperparameters really were learned (so this comparison can fail)
        if k < len(tower) - 1:
            start = tower[k][1].get("lr", None)
            if start is not None and rel_err(ol[k]["lr"], torch.full((len(ol[k]["lr"]),) if isinstance(
                    ol[k]["lr"], list) else (), start)) > 1e-6:
                moved = True
    assert moved, "no learning rate moved: the test would not notice a broken hypergradient"


BACKENDS = ["reference", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", list(HEIGHT1))
def test_height1_float64(name, model_kind, backend):
    _compare(HEIGHT1[name], model_kind, torch.float64, 1e-9, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_kind", ["mlp", "cnn"])
@pytest.mark.parametrize("name", list(TALL))
def test_tall_towers_float64(name, model_kind, backend):
    _compare(TALL[name], model_kind, torch.float64, 1e-9, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["sgd/sgd", "sgd(momentum)/sgd", "sgdperparam/sgd", "adagrad/sgd", "rmsprop/sgd",
                                  "rmspropalpha/sgd", "adam/sgd", "adambaydin/sgd"])
def test_height1_float32(name, backend):
    _compare(HEIGHT1[name], "mlp", torch.float32, 1e-4, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["adam/adam", "adam/rmsprop/sgdperparam/adagrad/sgd"])
def test_tall_float32(name, backend):
    _compare(TALL[name], "cnn", torch.float32, 1e-4, backend)
