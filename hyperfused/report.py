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


def plot(out_dir: str, runs: List[dict], title: str) -> List[str]:
    """loss.png: every optimizer's training loss (smoothed) and test error per epoch; hyper.png: learned
    hyperparameters per level over steps. Log scales where values span decades."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.ticker
    import matplotlib.pyplot as plt

    paths = []
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        losses = [s["loss"] for s in r["steps"]]
        window = max(1, len(losses) // 100)
        ax1.plot([s["step"] for s in r["steps"]], _smooth(losses, window), label=r["spec"], linewidth=1.2)
        ax2.plot([e["epoch"] for e in r["epochs"]], [100 * e["test_error"] for e in r["epochs"]], marker="o",
                 label=r["spec"])
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (moving average)")
    ax1.set_title("training loss")
    ax2.set_xlabel("epoch")
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax2.set_ylabel("test error (%)")
    ax2.set_title("test error")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(out_dir, "loss.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    # learned hyperparameters: one panel per (level, name) that changes in some run
    series: Dict[str, Dict[str, List[float]]] = {}
    for r in runs:
        if not r["steps"]:
            continue
        flat = [_flat_levels(s["levels"]) for s in r["steps"]]
        for key in flat[0]:
            vals = [f[key] for f in flat]
            if max(vals) != min(vals):
                series.setdefault(key, {})[r["spec"]] = vals
    if series:
        keys = sorted(series)
        cols = min(3, len(keys))
        rows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            for spec, vals in series[key].items():
                ax.plot(range(1, len(vals) + 1), vals, label=spec, linewidth=1.2)
            vals_all = [v for vs in series[key].values() for v in vs]
            if min(vals_all) > 0 and max(vals_all) / min(vals_all) > 20:
                ax.set_yscale("log")
            else:
                ax.ticklabel_format(axis="y", useOffset=False)
            level, name = key.split(".", 1)
            ax.set_title(f"level {level[1:]}: {name}" + (" (mean over tensors)" if "per" in name else ""))
            ax.set_xlabel("step")
            ax.set_ylabel(name)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(f"learned hyperparameters - {title}")
        fig.tight_layout()
        path = os.path.join(out_dir, "hyper.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
