"""Can a hypergradient tower replace a tuned learning-rate schedule? A small GPT-style character transformer on
the Shakespeare plays, a fixed budget of steps, the same grid of initial learning rates for every method.

    python bench/transformer_study.py                  # about 25 minutes on 2 cores; writes a markdown section
    python bench/transformer_study.py --quick          # a smoke run (tiny model, a few steps)

Methods (each run at every lr of the grid, the same initial weights and the same batches):
- ``torch.adamw+cosine``: torch's AdamW with linear warmup (10% of the steps) and cosine decay to 0, the standard
  recipe;
- ``hf.adamw (constant)``: hf.AdamW at a constant lr, no schedule, no tower (the control);
- ``hf.adamw/sgd``: hf.AdamW with an SGD level above that learns its lr and betas, constant, no schedule;
- ``hf.adamw/sgd/sgd``: the same with one more SGD level (its step size: KAPPA_TOP below);
- ``hf.adamw/sgd per-tensor``: one learned lr per parameter tensor;
- ``schedulefree.adamw``: schedule-free AdamW (Defazio et al.), a learning-rate-schedule-free peer from PyPI, with
  its own warmup; not run when the package is missing.
Weight decay 0.01 (torch's AdamW default) everywhere; no gradient clipping. The step size of the level above
AdamW is the paper's Adam / SGD value (1e-5), not tuned here.
"""
import argparse
import copy
import importlib.util
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

import hyperfused as hf  # noqa: E402
from hyperfused import data as datasets  # noqa: E402
from _pool import run_pool, write_section  # noqa: E402
from hyperfused.models import make_model  # noqa: E402

FIG = os.path.join(HERE, "figures")
KAPPA = 1e-5          # step size of the level above level 0 (the paper's Adam / SGD value)
# The top of the three-level tower: that level's gradient is about the product of two successive level-0
# hypergradients, which reach ~2e3 in the first steps of this model (measured: the lr moves by ~2e-2 over the
# first 5 steps at KAPPA), so ~4e6; with 1e-5 there too, every run diverges within its first steps (the --quick
# run shows it). KAPPA_TOP * 4e6 ~ KAPPA keeps the first steps from moving KAPPA by more than its own size.
KAPPA_TOP = 1e-12
WEIGHT_DECAY = 0.01   # torch.optim.AdamW's default
LRS = [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]
METHODS = ["torch.adamw+cosine", "hf.adamw (constant)", "hf.adamw/sgd", "hf.adamw/sgd/sgd",
           "hf.adamw/sgd per-tensor", "schedulefree.adamw"]
TOWERS = ("hf.adamw/sgd", "hf.adamw/sgd/sgd", "hf.adamw/sgd per-tensor")


def available(method: str) -> bool:
    return method != "schedulefree.adamw" or importlib.util.find_spec("schedulefree") is not None


def make_optimizer(method: str, params, lr: float, steps: int):
    """(optimizer, scheduler or None, has train/eval modes)."""
    params = list(params)
    if method == "torch.adamw+cosine":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
        warm = max(1, steps // 10)

        def factor(t):                         # t: steps taken so far
            if t < warm:
                return (t + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, steps - warm)))
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor), False
    if method == "hf.adamw (constant)":
        return hf.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY), None, False
    if method == "hf.adamw/sgd":
        return hf.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, hyper=hf.SGD(lr=KAPPA)), None, False
    if method == "hf.adamw/sgd/sgd":
        return hf.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY,
                        hyper=hf.SGD(lr=KAPPA, hyper=hf.SGD(lr=KAPPA_TOP))), None, False
    if method == "hf.adamw/sgd per-tensor":
        return hf.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY, hyper=hf.SGD(lr=KAPPA), per_tensor=True), None, False
    if method == "schedulefree.adamw":
        import schedulefree
        return (schedulefree.AdamWScheduleFree(params, lr=lr, weight_decay=WEIGHT_DECAY,
                                               warmup_steps=max(1, steps // 10)), None, True)
    raise ValueError(f"unknown method {method!r}; the methods are {', '.join(METHODS)}")


def _lr_now(opt) -> float:
    """The lr of the first group as the optimizer shows it (hf: the learned value; per-tensor: their mean)."""
    return float(opt.param_groups[0]["lr"])


def _state_bytes(opt) -> int:
    seen, total = set(), 0

    def walk(x):
        nonlocal total
        if isinstance(x, torch.Tensor):
            if x.data_ptr() not in seen:
                seen.add(x.data_ptr())
                total += x.numel() * x.element_size()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
    walk(opt.state_dict()["state"])
    return total


@torch.no_grad()
def evaluate(model, x, y, batch=256) -> float:
    total, count = 0.0, 0
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        total += float(nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), y[i:i + batch].reshape(-1),
                                                   reduction="sum"))
        count += y[i:i + batch].numel()
    return total / count


def synthetic_text(chars: int = 40_000, vocab: int = 16, seq_len: int = 64, seed: int = 0) -> datasets.Dataset:
    """A stand-in corpus for smoke runs (no download): a first-order Markov chain over ``vocab`` symbols in which
    each symbol has 3 likely successors, cut into sequences like load_shakespeare's (last 10% held out)."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.full((vocab, vocab), 0.01)
    for a in range(vocab):
        trans[a, torch.randperm(vocab, generator=g)[:3]] = 1.0
    ids = torch.empty(chars, dtype=torch.int64)
    ids[0] = 0
    for i in range(1, chars):
        ids[i] = torch.multinomial(trans[ids[i - 1]], 1, generator=g)
    n = (chars - 1) // seq_len
    x, y = ids[:n * seq_len].reshape(n, seq_len), ids[1:n * seq_len + 1].reshape(n, seq_len)
    n_test = max(1, n // 10)
    return datasets.Dataset("synthetic-text", x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:], vocab)


def load_text(name: str) -> datasets.Dataset:
    return synthetic_text() if name == "synthetic" else datasets.load(name)


_DATA = {}


def run_one(job):
    """One run: (method, lr, steps, batch, width, layers, seed, validation sequences, data) -> summary dict."""
    method, lr, steps, batch, width, layers, seed, val_max, data_name = job
    torch.set_num_threads(1)
    if data_name not in _DATA:
        _DATA[data_name] = load_text(data_name)
    d = _DATA[data_name]
    x_val, y_val = d.x_test[:val_max], d.y_test[:val_max]
    torch.manual_seed(seed)
    model = make_model("gpt", 0, d.classes, width, depth=layers)
    opt, sched, modes = make_optimizer(method, model.parameters(), lr, steps)
    g = torch.Generator().manual_seed(seed)
    times, lrs, losses, curve = [], [], [], []
    diverged = False
    every = max(1, steps // 5)
    for t in range(steps):
        idx = torch.randint(0, len(d.x_train), (batch,), generator=g)
        if modes:
            opt.train()
        model.train()
        t0 = time.perf_counter()
        opt.zero_grad()
        out = model(d.x_train[idx])
        loss = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), d.y_train[idx].reshape(-1))
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        lv = loss.item()
        times.append(time.perf_counter() - t0)
        losses.append(lv)
        if t % max(1, steps // 100) == 0 or t == steps - 1:
            lrs.append((t + 1, _lr_now(opt)))
        if not math.isfinite(lv):
            diverged = True
            break
        if (t + 1) % every == 0 and t + 1 < steps:
            if modes:
                opt.eval()
            model.eval()
            curve.append((t + 1, evaluate(model, x_val, y_val)))
    if modes:
        opt.eval()
    model.eval()
    val = float("nan") if diverged else evaluate(model, x_val, y_val)
    curve.append((len(losses), val))
    params = sum(p.numel() for p in model.parameters())
    return {"method": method, "lr": lr, "val_loss": val, "train_loss": statistics.fmean(losses[-max(1, steps // 10):]),
            "ms_per_step": 1e3 * statistics.median(times), "state_mb": _state_bytes(opt) / 2 ** 20,
            "params": params, "lr_trace": lrs, "curve": curve, "diverged": diverged}


def time_methods(methods, lr, steps, batch, width, layers, seed, data_name, warmup=5):
    """Median ms per training step (forward, backward, optimizer step) of every method at one lr, measured in this
    process alone, round-robin over the methods (one step of each in turn, so that a noisy machine slows them
    alike), and each optimizer's state in MB."""
    torch.set_num_threads(1)
    d = load_text(data_name)
    runs = []
    for m in methods:
        torch.manual_seed(seed)
        model = make_model("gpt", 0, d.classes, width, depth=layers)
        opt, sched, modes = make_optimizer(m, model.parameters(), lr, steps + warmup)
        if modes:
            opt.train()
        runs.append((m, model, opt, sched, []))
    g = torch.Generator().manual_seed(seed)
    for t in range(steps + warmup):
        idx = torch.randint(0, len(d.x_train), (batch,), generator=g)
        for m, model, opt, sched, times in runs:
            t0 = time.perf_counter()
            opt.zero_grad()
            out = model(d.x_train[idx])
            nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), d.y_train[idx].reshape(-1)).backward()
            opt.step()
            if sched is not None:
                sched.step()
            if t >= warmup:
                times.append(time.perf_counter() - t0)
    return {m: {"ms_per_step": 1e3 * statistics.median(times), "state_mb": _state_bytes(opt) / 2 ** 20,
                "backend": (opt.backends()[0] if isinstance(opt, hf.HyperOptimizer) else "torch")}
            for m, _, opt, _, times in runs}


def run_all(jobs, workers):
    return run_pool(run_one, jobs, workers)


def plot(res, methods, lrs, path_loss, path_lr):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(path_loss), exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for m in methods:
        pts = [(r["lr"], r["val_loss"]) for r in res if r["method"] == m]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("initial (peak) learning rate")
    ax.set_ylabel("final validation loss (nats/char)")
    ax.set_title("char transformer on Shakespeare: sensitivity to the initial lr")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path_loss, dpi=110)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(TOWERS), figsize=(12, 3.8), sharey=True)
    for ax, m in zip(axes, TOWERS):
        for r in res:
            if r["method"] == m:
                ax.plot([p[0] for p in r["lr_trace"]], [p[1] for p in r["lr_trace"]], label=f"lr0={r['lr']:g}")
        ax.set_yscale("symlog", linthresh=1e-5)     # a learned Adam lr is unconstrained: it can cross 0
        ax.set_title(m + (" (mean over tensors)" if "per-tensor" in m else ""), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("level-0 learning rate (symlog: linear below 1e-5)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_lr, dpi=110)
    plt.close(fig)


def section(res, methods, lrs, args, figs, timing=None):
    params = res[0]["params"]
    cmd = "python bench/transformer_study.py" + (" --quick" if args.quick else "") + (
        f" --data {args.data}" if args.data != "shakespeare" else "")
    corpus = "the plays" if args.data == "shakespeare" else "a generated Markov-chain corpus (smoke run)"
    L = ["## Can a tower replace a tuned learning-rate schedule? (character transformer, Shakespeare)", "",
         f"Command: `{cmd}` (CPU, {args.workers} single-thread workers). Model: GPT-style, pre-norm, "
         f"{args.layers} layers, width {args.width}, 4 heads, {params / 1e6:.2f}M parameters; {corpus} in "
         f"sequences of 64 characters (last 10% held out; validation loss on its first {args.val} sequences), "
         f"batch {args.batch}, {args.steps} steps, seed {args.seed}: every run starts from the same weights and "
         f"sees the same batches. Weight decay {WEIGHT_DECAY} everywhere. torch's recipe: AdamW, linear warmup "
         f"over 10% of the steps, cosine decay to 0. Towers: constant lr, no schedule; the level above AdamW is "
         f"SGD({KAPPA:g}) (the paper's Adam / SGD step size, not tuned here); the third level of adamw/sgd/sgd is "
         f"SGD({KAPPA_TOP:g}) (with {KAPPA:g} there too it diverges within its first steps at every lr: that "
         "level's gradient is about the product of two successive level-0 hypergradients, ~2e3 each in the first "
         "steps of this model).", "",
         f"Validation loss vs initial lr: [{figs[0]}]({figs[0]}); learned lr over training: [{figs[1]}]({figs[1]}).",
         "", ("Time per training step: the separate timing run (`--time-steps`: every method at lr "
              f"{lrs[len(lrs) // 2]:g}, one step of each in turn in one single-thread process, median), not the "
              "grid's runs (which share the machine with each other)." if timing else
              "Time per training step: median over each grid run (the runs share the machine)."), "",
         "| method | " + " | ".join(f"lr={lr:g}" for lr in lrs) + " | best | worst | ms/step | state MB |",
         "|---|" + "---|" * (len(lrs) + 4)]
    for m in methods:
        rows = {r["lr"]: r for r in res if r["method"] == m}
        vals = [rows[lr]["val_loss"] for lr in lrs]
        finite = [v for v in vals if math.isfinite(v)]
        best = min(finite) if finite else float("nan")
        worst = max(vals) if len(finite) == len(vals) else float("inf")
        ms = timing[m]["ms_per_step"] if timing else statistics.median(r["ms_per_step"] for r in rows.values())
        mb = timing[m]["state_mb"] if timing else statistics.median(r["state_mb"] for r in rows.values())
        L.append(f"| {m} | " + " | ".join("diverged" if not math.isfinite(v) else f"{v:.3f}" for v in vals)
                 + f" | {best:.3f} | {worst:.3f} | {ms:.1f} | {mb:.1f} |")
    L += ["", "Final learned level-0 lr (towers; per-tensor: mean over tensors):", "",
          "| method | " + " | ".join(f"lr0={lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for m in methods:
        if m in TOWERS:
            rows = {r["lr"]: r for r in res if r["method"] == m}
            L.append(f"| {m} | " + " | ".join(f"{rows[lr]['lr_trace'][-1][1]:.3g}" for lr in lrs) + " |")
    return L + [""]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--val", type=int, default=512, help="validation sequences")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lrs", type=float, nargs="+", default=LRS)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", default="shakespeare", choices=["shakespeare", "synthetic"],
                    help="the plays, or a generated stand-in corpus for smoke runs (no download)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: a tiny model, 12 steps, two lrs")
    ap.add_argument("--out", default=os.path.join(HERE, "transformer_study.md"))
    ap.add_argument("--json", help="also write every run's results here")
    ap.add_argument("--time-steps", type=int, default=60,
                    help="steps per method of the separate timing run (round-robin, one process; 0: none)")
    ap.add_argument("--figures", default=FIG)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.width, args.layers, args.batch, args.val, args.lrs = 12, 32, 2, 4, 16, args.lrs[:2]
        args.time_steps = min(args.time_steps, 3)
    methods = [m for m in args.methods if available(m)]
    skipped = [m for m in args.methods if m not in methods]
    jobs = [(m, lr, args.steps, args.batch, args.width, args.layers, args.seed, args.val, args.data)
            for m in methods for lr in args.lrs]
    res = run_all(jobs, args.workers)
    timing = (time_methods(methods, args.lrs[len(args.lrs) // 2], args.time_steps, args.batch, args.width, args.layers,
                           args.seed, args.data) if args.time_steps else None)
    figs = ("figures/transformer_val_vs_lr.png", "figures/transformer_learned_lr.png")
    plot(res, methods, args.lrs, os.path.join(args.figures, os.path.basename(figs[0])),
         os.path.join(args.figures, os.path.basename(figs[1])))
    L = section(res, methods, args.lrs, args, figs, timing)
    if skipped:
        L += [f"Not run (package missing): {', '.join(skipped)}.", ""]
    write_section(L, args.out, args.json, {"runs": res, "timing": timing})
    return res


if __name__ == "__main__":
    main()
