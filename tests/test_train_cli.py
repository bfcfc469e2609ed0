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
