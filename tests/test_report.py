"""The plots of ``--out`` (hyperfused/report.py): integer epochs, one legend per figure, lr first, tiny ranges
drawn as the change from the start. The figures are built from a small hand-made results structure (the shape
train.py passes: dataclasses.asdict of its results) and checked on the matplotlib objects that plot() saves."""
import re

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.colors  # noqa: E402
import matplotlib.figure  # noqa: E402

from hyperfused import report  # noqa: E402

ADAM, SGD = "adam(1e-3)/sgd(1e-4)", "sgd(0.01, 0.5)/sgd(0.01)"
STEPS_PER_EPOCH = 6
BETA2_0 = 0.9990000128746033           # 0.999 as float32 gives it back


def _run(spec, epochs, levels_at):
    steps = []
    for t in range(1, epochs * STEPS_PER_EPOCH + 1):
        steps.append({"step": t, "epoch": (t - 1) // STEPS_PER_EPOCH + 1, "loss": 2.0 / t,
                      "levels": levels_at(t)})
    per_epoch = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.2 / e, "test_error": 0.4 / e, "seconds": 0.1}
                 for e in range(1, epochs + 1)]
    return {"spec": spec, "final_loss": steps[-1]["loss"], "test_error": per_epoch[-1]["test_error"],
            "test_loss": per_epoch[-1]["test_loss"], "ms_per_step": 1.0, "peak_memory_mb": 0.0, "skipped": 0,
            "levels": levels_at(len(steps)), "steps": steps, "epochs": per_epoch}


def _adam_levels(t):
    # lr grows sevenfold; beta1 and beta2 move by 1e-5 and 1e-7: tiny ranges; level 1's lr moves
    return [{"lr": 1e-3 * (1 + t), "beta1": 0.8999999761581421 + 2e-6 * (t - 1), "beta2": BETA2_0 - 1e-8 * (t - 1)},
            {"lr": 1e-4 * (1 + 0.1 * t), "momentum": 0.0}]


def _sgd_levels(t):
    return [{"lr": 0.01 + 0.002 * t, "momentum": 0.5 + 0.01 * t}, {"lr": 0.01, "momentum": 0.0}]


def _runs(epochs):
    return [_run(ADAM, epochs, _adam_levels), _run(SGD, epochs, _sgd_levels)]


@pytest.fixture
def figures(monkeypatch, tmp_path):
    """plot(runs) -> {"loss.png": Figure, "hyper.png": Figure}: the figures plot() saves, kept for inspection."""
    saved = {}
    original = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        saved[str(fname).rsplit("/", 1)[-1]] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)

    def make(runs):
        saved.clear()
        paths = report.plot(str(tmp_path), runs, "test title")
        assert sorted(p.rsplit("/", 1)[-1] for p in paths) == ["hyper.png", "loss.png"]
        return dict(saved)
    return make


def _panel(fig, name, level=0):
    """The hyperparameter panel whose title names ``name`` at ``level`` (as in "level 0: beta2")."""
    found = [ax for ax in fig.axes if re.match(rf"level {level}: {name}\b", ax.get_title())]
    assert len(found) == 1, [ax.get_title() for ax in fig.axes]
    return found[0]


def _plain(text):
    """A tick label without matplotlib's mathtext wrapper ($\\mathdefault{...}$)."""
    m = re.fullmatch(r"\$\\mathdefault\{(.*)\}\$", text)
    return m.group(1) if m else text


def _visible_ticks(ax, axis):
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.get_xticks() if axis == "x" else ax.get_yticks()
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [(t, lab.get_text()) for t, lab in zip(ticks, labels) if lo <= t <= hi]


@pytest.mark.parametrize("epochs", [1, 3])
def test_epoch_axes_have_integer_ticks(figures, epochs):
    fig = figures(_runs(epochs))["loss.png"]
    epoch_axes = [ax for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert len(epoch_axes) == 1
    ax = epoch_axes[0]
    ticks = _visible_ticks(ax, "x")
    assert ticks, "the epoch axis shows no tick"
    for value, text in ticks:
        assert re.fullmatch(r"\d+", text), f"epoch tick {text!r} is not an integer"
        assert value == int(text)
    assert [int(text) for _, text in ticks] == list(range(1, epochs + 1))
    # every epoch's point is drawn with a marker, inside the visible range, with room around it
    lo, hi = ax.get_xlim()
    assert lo <= 1 - 0.25 and hi >= epochs + 0.25
    for line in ax.get_lines():
        if len(line.get_xdata()) == epochs:
            assert line.get_marker() not in (None, "", "None", " ")


@pytest.mark.parametrize("name", ["loss.png", "hyper.png"])
def test_one_legend_per_figure_with_one_entry_per_optimizer(figures, name):
    fig = figures(_runs(2))[name]
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert len(legends) == 1, f"{name}: {len(legends)} legends"
    assert [t.get_text() for t in legends[0].get_texts()] == [ADAM, SGD]


def _data_lines(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 2]     # not a 2-point guide line


def test_an_optimizer_has_one_colour_in_every_panel(figures):
    figs = figures(_runs(2))
    hyper = figs["hyper.png"]
    colour = matplotlib.colors.to_hex
    adam, sgd = (colour(line.get_color()) for line in _data_lines(_panel(hyper, "lr")))
    assert adam != sgd
    assert [colour(line.get_color()) for line in _data_lines(_panel(hyper, "momentum"))] == [sgd]
    assert [colour(line.get_color()) for line in _data_lines(_panel(hyper, "beta2"))] == [adam]
    loss = [ax for ax in figs["loss.png"].axes if ax.get_xlabel() == "epoch"][0]
    assert [colour(line.get_color()) for line in loss.get_lines()] == [adam, sgd]


def test_panels_start_with_lr_then_the_optimizers_order(figures):
    fig = figures(_runs(2))["hyper.png"]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].startswith("level 0: lr")
    assert fig.axes[0].get_ylabel() == "lr"
    names = [re.match(r"level (\d+): (\w+)", t).groups() for t in titles]
    assert names == [("0", "lr"), ("0", "momentum"), ("0", "beta1"), ("0", "beta2"), ("1", "lr")]


def test_a_tiny_range_panel_shows_the_change_from_the_start(figures):
    fig = figures(_runs(2))["hyper.png"]
    ax = _panel(fig, "beta2")
    assert ax.get_ylabel() == "beta2 - 0.999"
    (line,) = ax.get_lines()[:1]
    ys = list(line.get_ydata())
    exp = [lv[0]["beta2"] - BETA2_0 for lv in (_adam_levels(t) for t in range(1, len(ys) + 1))]
    assert ys[0] == 0.0
    assert ys == pytest.approx(exp, abs=1e-15)
    beta1 = _panel(fig, "beta1")
    assert beta1.get_ylabel() == "beta1 - 0.9" and beta1.get_lines()[0].get_ydata()[0] == 0.0
    # readable ticks: a few significant digits each (a scientific offset carries the power of ten)
    for panel in (ax, beta1):
        ticks = [_plain(text) for _, text in _visible_ticks(panel, "y")]
        assert len(ticks) >= 3
        for text in ticks:
            assert len(text.lstrip("-\u2212")) <= 5, f"tick {text!r} of a tiny-range panel"


def test_a_panel_with_a_wide_range_keeps_its_values(figures):
    fig = figures(_runs(2))["hyper.png"]
    ax = _panel(fig, "momentum")
    assert ax.get_ylabel() == "momentum"
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([0.5 + 0.01 * t for t in range(1, 13)])
    lr = _panel(fig, "lr")
    assert lr.get_ylabel() == "lr" and lr.get_lines()[0].get_ydata()[0] == pytest.approx(2e-3)
