"""The training command's faults: progress output, argument checks that come before any training, exit statuses."""
import io
import sys

import pytest
import torch

from hyperfused import train


class FakeTTY(io.StringIO):
    """A captured stream that says it is a terminal, as a user's console does."""

    def isatty(self):
        return True


def test_agd_runs_with_the_progress_bar(monkeypatch):
    """AGD's param groups have no 'lr': the bar shows its eta instead of failing with KeyError."""
    pytest.importorskip("tqdm")
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    res = train.main(["--data", "synthetic", "--epochs", "1", "--opt", "agd"])
    assert res[0].spec == "agd"
    assert "eta=" in err.getvalue() and "\r" in err.getvalue()      # the bar ran, showing eta


def test_postfix_of_an_optimizer_without_lr():
    class NoLr(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(gain=1.0))

        def step(self, closure=None):
            return None

    opt = NoLr([torch.zeros(2, requires_grad=True)])
    assert train._levels_of(opt) == [{}]
    assert train._postfix(0.5, train._levels_of(opt)) == {"loss": "0.5000"}
    sgd = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.25)
    assert train._postfix(0.5, train._levels_of(sgd)) == {"loss": "0.5000", "lr": "0.25"}


def _epoch_lines(text):
    return [ln for ln in text.splitlines() if ": epoch " in ln]


def test_progress_to_a_log_is_one_plain_line_per_epoch(capsys):
    """Captured stderr is not a terminal (like a log file): no bar redraws, one line per run and epoch."""
    pytest.importorskip("tqdm")
    train.main(["--data", "synthetic", "--epochs", "2", "--opt", "sgd(0.05)", "--opt", "adam(1e-3)/sgd(1e-5)"])
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err
    lines = _epoch_lines(err)
    assert [ln.split(":")[0] for ln in lines] == ["sgd(0.05)"] * 2 + ["adam(1e-3)/sgd(1e-5)"] * 2
    assert "epoch 1/2" in lines[0] and "epoch 2/2" in lines[1] and "test error" in lines[1]
    assert "L1: lr=" in lines[3]                      # the learned hyperparameters of every level


def test_no_progress_is_silent(capsys):
    train.main(["--data", "synthetic", "--epochs", "1", "--opt", "sgd(0.05)", "--no-progress"])
    assert capsys.readouterr().err == ""


def test_missing_tqdm_warns_once_naming_the_extra_then_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)          # import tqdm raises ImportError
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    train.main(["--data", "synthetic", "--epochs", "2", "--opt", "sgd(0.05)", "--opt", "adam(1e-3)"])
    text = err.getvalue()
    assert text.count("tqdm is not installed") == 1
    assert "pip install 'hyperfused[train]'" in text
    assert len(_epoch_lines(text)) == 4 and "\r" not in text
