"""Metrics files and plots of the training command (``--out DIR``)."""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Dict, List


def _flat_levels(levels: List[Dict[str, object]]) -> Dict[str, float]:
    """{"L0.lr": ..., "L1.lr": ...}; a per-tensor lr list becomes its mean (the lists stay in the JSON)."""
    out = {}
    for k, hp in enumerate(levels):
        for name, v in hp.items():
            out[f"L{k}.{name}"] = sum(v) / len(v) if isinstance(v, list) else v
    return out


def write_metrics(out_dir: str, runs: List[dict], meta: dict) -> List[str]:
    """metrics.json (everything), steps.csv and epochs.csv (one row per run and step / epoch)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    path = os.path.join(out_dir, "metrics.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "runs": runs}, f)
    paths.append(path)
    hyper_cols = sorted({c for r in runs for s in r["steps"] for c in _flat_levels(s["levels"])})
    path = os.path.join(out_dir, "steps.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["optimizer", "step", "epoch", "loss"] + hyper_cols)
        for r in runs:
            for s in r["steps"]:
                flat = _flat_levels(s["levels"])
                w.writerow([r["spec"], s["step"], s["epoch"], s["loss"]] + [flat.get(c, "") for c in hyper_cols])
    paths.append(path)
    path = os.path.join(out_dir, "epochs.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["optimizer", "epoch", "train_loss", "test_loss", "test_error", "seconds"])
        for r in runs:
            for e in r["epochs"]:
                w.writerow([r["spec"], e["epoch"], e["train_loss"], e["test_loss"], e["test_error"], e["seconds"]])
    paths.append(path)
    return paths


def _smooth(values: List[float], window: int) -> List[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


# learned hyperparameters: level 0 first; within a level lr first, then the optimizer's own order
_HYPER_ORDER = ("lr", "eta", "momentum", "beta1", "beta2", "alpha")
# a panel whose values span less than this fraction of their magnitude is drawn as the change from the start
TINY_RANGE = 1e-3


def _color(i: int) -> str:
    """One colour per optimizer, the same in every panel and figure."""
    return f"C{i % 10}"


def _panel_order(keys: List[str], first_seen: Dict[str, int]) -> List[str]:
    """"L<k>.<name>" keys by level, then lr first and the optimizers' hyperparameter order (lr, momentum or
    beta1, beta2 or alpha), then any other name in the order the runs report it."""
    def rank(key):
        level, name = key.split(".", 1)
        known = _HYPER_ORDER.index(name) if name in _HYPER_ORDER else len(_HYPER_ORDER)
        return int(level[1:]), known, first_seen[key]
    return sorted(keys, key=rank)


def _short(x: float) -> str:
    """x with the fewest significant digits that give it back to float32 precision (0.999 for float32's
    0.99900001287)."""
    for p in range(1, 18):
        s = f"{x:.{p}g}"
        if abs(float(s) - x) <= abs(x) * 2.0 ** -24:
            return s
    return repr(x)


def _epoch_axis(ax, epochs: List[int]) -> None:
    """Integer epoch ticks; a single epoch gets the one tick "1" in a visible range around it."""
    import matplotlib.ticker
    lo, hi = (min(epochs), max(epochs)) if epochs else (1, 1)
    ax.set_xlim(lo - 0.5, hi + 0.5)
    if hi - lo <= 12:
        ax.set_xticks(range(lo, hi + 1))
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
    ax.set_xlabel("epoch")


def _log_y(ax) -> None:
    """A log y-axis that also labels some minor ticks (2, 3, 5) where the data span under three decades, so a
    value between two powers of ten can be read off."""
    import matplotlib.ticker
    ax.set_yscale("log")
    ax.yaxis.set_minor_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False,
                                                                           minor_thresholds=(3, 1)))


def _figure_legend(fig, handles, labels) -> None:
    """The figure's one legend, below the panels: one entry per optimizer."""
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)


def plot(out_dir: str, runs: List[dict], title: str) -> List[str]:
    """loss.png: every optimizer's training loss (smoothed) per step and test error per epoch; hyper.png: the
    learned hyperparameters per level over steps (lr first). One legend per figure, one colour per optimizer.
    Log scales where values span decades; a panel whose values barely move (less than TINY_RANGE of their
    magnitude) shows the change from the initial value instead."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    paths = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    handles, labels = [], []
    epochs_seen = set()
    for i, r in enumerate(runs):
        losses = [s["loss"] for s in r["steps"]]
        window = max(1, len(losses) // 100)
        line, = ax1.plot([s["step"] for s in r["steps"]], _smooth(losses, window), color=_color(i),
                         linewidth=1.2)
        epochs = [int(e["epoch"]) for e in r["epochs"]]
        errors = [100 * e["test_error"] for e in r["epochs"]]
        epochs_seen.update(epochs)
        ax2.plot(epochs, errors, marker="o", color=_color(i))
        if len(epochs) == 1:          # a lone dot: say its value
            ax2.annotate(f"{errors[0]:.1f}%", (epochs[0], errors[0]), xytext=(7, 0), textcoords="offset points",
                         va="center", fontsize=8, color=_color(i))
        handles.append(line)
        labels.append(r["spec"])
    _log_y(ax1)
    ax1.set_xlabel("step")
    ax1.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax1.set_ylabel("training loss (moving average)")
    ax1.set_title("training loss")
    _epoch_axis(ax2, sorted(epochs_seen))
    ax2.set_ylabel("test error (%)")
    ax2.set_title("test error" + (" after epoch %d" % min(epochs_seen) if len(epochs_seen) == 1 else ""))
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    if labels:
        _figure_legend(fig, handles, labels)
    fig.suptitle(title)
    path = os.path.join(out_dir, "loss.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    # learned hyperparameters: one panel per (level, name) that changes in some run
    series: Dict[str, Dict[int, tuple]] = {}      # key -> run index -> (steps, values)
    first_seen: Dict[str, int] = {}
    per_tensor = set()
    for i, r in enumerate(runs):
        if not r["steps"]:
            continue
        flat = [_flat_levels(s["levels"]) for s in r["steps"]]
        steps = [s["step"] for s in r["steps"]]
        for k, hp in enumerate(r["steps"][0]["levels"]):
            per_tensor.update(f"L{k}.{n}" for n, v in hp.items() if isinstance(v, list))
        for key in flat[0]:
            first_seen.setdefault(key, len(first_seen))
            vals = [f[key] for f in flat]
            if max(vals) != min(vals):
                series.setdefault(key, {})[i] = (steps, vals)
    if series:
        keys = _panel_order(list(series), first_seen)
        cols = min(3, len(keys))
        rows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows + 0.6), squeeze=False,
                                 layout="constrained")
        plotted: Dict[int, object] = {}
        for ax, key in zip(axes.flat, keys):
            level, name = key.split(".", 1)
            vals_all = [v for _, vs in series[key].values() for v in vs]
            lo, hi = min(vals_all), max(vals_all)
            magnitude = max(abs(lo), abs(hi))
            tiny = hi - lo < TINY_RANGE * magnitude
            starts = {_short(vs[0]) for _, vs in series[key].values()}
            for i, (steps, vals) in series[key].items():
                ys = [v - vals[0] for v in vals] if tiny else vals
                plotted[i], = ax.plot(steps, ys, color=_color(i), linewidth=1.2)
            if tiny:
                ylabel = (f"{name} - {starts.pop()}" if len(starts) == 1
                          else f"{name} - its initial value")
                ax.axhline(0.0, color="0.5", linewidth=0.8, linestyle=":")
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useOffset=False, useMathText=True)
            elif lo > 0 and hi / lo > 20:
                _log_y(ax)
                ylabel = name
            else:               # the values themselves (no offset); small ones with a power of ten
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False, useMathText=True)
                ylabel = name
            ax.set_title(f"level {level[1:]}: {name}" + (" (mean over tensors)" if key in per_tensor else "")
                         + (" (change from start)" if tiny else ""))
            ax.set_xlabel("step")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        order = sorted(plotted)
        _figure_legend(fig, [plotted[i] for i in order], [runs[i]["spec"] for i in order])
        fig.suptitle(f"learned hyperparameters - {title}")
        path = os.path.join(out_dir, "hyper.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
