"""The experiments' models and scripts (bench/paper_experiments.py, bench/transformer_study.py, bench/agd_depth.py):
the models are what their docstrings say (checked against hand-written forward passes), and a smoke run of each
script on data that needs no download produces every row of its section."""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from hyperfused import models

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench")
sys.path.insert(0, BENCH)


def test_paper_mlp_is_the_papers_model():
    """tanh after both layers (the paper's code), so the logits lie in [-1, 1]; the mlp has no output tanh."""
    torch.manual_seed(0)
    m = models.make_model("paper-mlp", 784, 10, 128)
    x = torch.rand(32, 784)
    l1, l2 = m[0], m[2]
    want = torch.tanh(F.linear(torch.tanh(F.linear(x, l1.weight, l1.bias)), l2.weight, l2.bias))
    torch.testing.assert_close(m(x), want, rtol=0, atol=0)
    assert [p.shape for p in m.parameters()] == [(128, 784), (128,), (10, 128), (10,)]
    big = m(100 * torch.randn(64, 784))
    assert big.abs().max() <= 1.0
    plain = models.make_model("mlp", 784, 10, 128)
    plain.load_state_dict(m.state_dict())
    assert plain(100 * torch.randn(64, 784)).abs().max() > 1.0


def test_gpt_is_causal_and_shaped():
    torch.manual_seed(0)
    m = models.make_model("gpt", 0, 20, 32, depth=2).eval()
    x = torch.randint(0, 20, (3, 16))
    y = x.clone()
    y[:, 9] = (y[:, 9] + 1) % 20
    a, b = m(x), m(y)
    assert a.shape == (3, 16, 20)
    torch.testing.assert_close(a[:, :9], b[:, :9], rtol=0, atol=0)      # earlier positions do not see position 9
    assert not torch.allclose(a[:, 9:], b[:, 9:])
    n = sum(p.numel() for p in m.parameters())
    assert n == 20 * 32 + 256 * 32 + 2 * (12 * 32 * 32 + 13 * 32) + 2 * 32 + 32 * 20 + 20
    with pytest.raises(ValueError, match="exceed the model's context of 256"):
        m(torch.zeros(1, 257, dtype=torch.int64))


def test_paper_experiments_smoke(tmp_path):
    import paper_experiments as pe
    lines, summary = pe.exp1(1, 2, 1, data="digits")
    assert set(summary) == {spec for spec, _, _ in pe.TABLE1}
    for spec, s in summary.items():
        assert len(s["errors"]) == 2 and s["std"] >= 0
        assert s["off"] == (abs(s["mean"] - s["paper"]) > max(2 * s["std"], 0.3))
    assert summary["sgd(0.01)"]["lr"] == pytest.approx(0.01)           # height 0: the lr does not move
    assert summary["sgd(0.01)/sgd(0.01)"]["lr"] != pytest.approx(0.01)
    assert sum(ln.startswith("| `") for ln in lines) == len(pe.TABLE1)
    lines, grid = pe.exp2(1, 1, 1, lrs=[1e-3, 1e-1], heights=[0, 1], data="digits", figures=str(tmp_path))
    assert set(grid) == {(0, 1e-3), (0, 1e-1), (1, 1e-3), (1, 1e-1)}
    assert (tmp_path / "lr_sensitivity.png").stat().st_size > 0


def test_transformer_study_smoke(tmp_path):
    import transformer_study as ts
    res = ts.main(["--quick", "--data", "synthetic", "--workers", "1", "--out", str(tmp_path / "t.md"),
                   "--figures", str(tmp_path)])
    methods = [m for m in ts.METHODS if ts.available(m)]
    assert {(r["method"], r["lr"]) for r in res} == {(m, lr) for m in methods for lr in ts.LRS[:2]}
    by = {(r["method"], r["lr"]): r for r in res}
    lr = ts.LRS[0]
    for m in methods:
        assert math.isfinite(by[(m, lr)]["val_loss"]), m
    const = [v for _, v in by[("hf.adamw (constant)", lr)]["lr_trace"]]
    assert const == [pytest.approx(lr)] * len(const)
    cos = [v for _, v in by[("torch.adamw+cosine", lr)]["lr_trace"]]
    assert max(cos) == pytest.approx(lr) and cos[-1] < 0.1 * lr        # warmup to the peak, cosine down to ~0
    for m in ts.TOWERS:
        assert by[(m, lr)]["lr_trace"][-1][1] != pytest.approx(lr), m   # the tower moved its lr
    text = (tmp_path / "t.md").read_text()
    assert all(f"| {m} |" in text for m in methods)
    assert (tmp_path / "transformer_val_vs_lr.png").exists() and (tmp_path / "transformer_learned_lr.png").exists()


def test_agd_depth_smoke(tmp_path):
    import agd_depth
    rows = agd_depth.main(["--quick", "--workers", "1", "--out", str(tmp_path / "a.md"), "--figures", str(tmp_path)])
    got = {(r["protocol"], r["depth"], r["opt"]) for r in rows}
    assert got == {(p, d, o) for p in agd_depth.PROTOCOLS for d in (2, 4) for o in ("agd", "agd.spectral", "adam", "sgd")}
    for r in rows:
        assert (r["lr"] is None) == r["opt"].startswith("agd")
        assert 0 <= r["acc"] <= 100
    assert (tmp_path / "agd_depth.png").exists()


def test_agd_depth_authors_protocol_is_theirs():
    """The authors' FCN: ReLU times sqrt(2) between bias-free layers; their square loss against sqrt(C) one-hot."""
    import agd_depth
    torch.manual_seed(0)
    m = agd_depth.FCN(6, 3, 3, 5, "relu")
    x = torch.randn(4, 6)
    h = x
    for layer in m.layers[:-1]:
        h = F.relu(h @ layer.weight.T) * math.sqrt(2)
    torch.testing.assert_close(m(x), h @ m.layers[-1].weight.T, rtol=0, atol=0)
    assert all(layer.bias is None for layer in m.layers)
    out, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    want = sum(((out[i] - math.sqrt(3) * F.one_hot(y[i], 3)) ** 2).sum() for i in range(4)) / 12
    torch.testing.assert_close(agd_depth.loss_fn("authors", out, y), want)


def test_agd_depth_ablations_change_one_factor_each():
    import agd_depth as a
    factors = {p: (a._authors(p), a._normalised(p), a._square_loss(p)) for p in a.PROTOCOLS + a.ABLATIONS}
    assert factors["harness"] == (False, False, False) and factors["authors"] == (True, True, True)
    for p in a.ABLATIONS:
        base = factors[p.split("-")[0]]
        assert sum(x != y for x, y in zip(factors[p], base)) == 1, p
