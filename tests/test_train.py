"""The training command: spec parsing, errors that point at the bad part, and a short real run."""
import pytest
import torch

import hyperfused as hf
from hyperfused import train


def test_parse_towers():
    s = train.parse_spec("adam[lr]/sgd(1e-5)")
    assert [(lv.kind, lv.lr, lv.learn) for lv in s.levels] == [("adam", None, ("lr",)), ("sgd", 1e-5, None)]
    s = train.parse_spec("rmsprop(0.01)[lr,alpha]/sgd(1e-4)")
    assert s.levels[0].learn == ("lr", "alpha") and s.levels[0].lr == 0.01
    s = train.parse_spec("sgd(0.01)/sgd(0.01)/sgd(0.01)")
    opt = train.build_optimizer(s, [torch.zeros(2, requires_grad=True)])
    assert opt.height == 2
    assert train.parse_spec("torch.adam(1e-3)").is_torch


@pytest.mark.parametrize("text,needle", [
    ("adam/sgd(1e-5", "^^^^^^^^"),
    ("adma(1e-3)", "unknown optimizer 'adma'"),
    ("adam(fast)", "'fast' is not a number"),
    ("adam[gamma]/sgd", "adam cannot learn 'gamma'"),
    ("adam/sgd[lr]", "the top level learns nothing"),
    ("torch.adam/sgd", "cannot be part of a tower"),
    ("", "empty optimizer spec"),
])
def test_malformed_specs_point_at_the_bad_part(text, needle):
    with pytest.raises(train.SpecError, match=None) as info:
        train.parse_spec(text)
    assert needle in str(info.value)


def test_short_run_on_digits_learns(capsys):
    pytest.importorskip("sklearn")
    results = train.main(["--epochs", "3", "--no-progress", "--opt", "adam(1e-3)/sgd(1e-4)",
                          "--opt", "torch.adam(1e-3)"])
    out = capsys.readouterr().out
    assert "adam(1e-3)/sgd(1e-4)" in out and "torch.adam(1e-3)" in out
    hyper, plain = results
    assert hyper.test_error < 0.25 and plain.test_error < 0.35      # 10 classes: chance is 0.9
    assert hyper.levels[0]["lr"] != 1e-3                              # the lr was learned


def test_bad_spec_on_the_command_line_fails_before_training(capsys):
    with pytest.raises(SystemExit):
        train.main(["--opt", "adam(1e-3)/sgd(", "--epochs", "1"])
    assert "bad optimizer spec" in capsys.readouterr().err
