"""AGD across depths, as its paper claims it ("out of the box", no tuning), against Adam and SGD at their best lr.

    python bench/agd_depth.py                 # about 30 minutes on 2 cores; writes a markdown section and a figure
    python bench/agd_depth.py --quick         # a smoke run

Bias-free fully connected networks of depth 2, 4, 8, 16 (width 256) on MNIST, under two protocols:
- ``harness``: this project's training command: tanh, cross-entropy, pixels in [0, 1];
- ``authors``: the AGD authors' code (jxbz/agd: architecture/fcn.py, main.py, data/mnist.py): ReLU times sqrt(2),
  square loss against the one-hot target scaled by sqrt(classes) (their default ``--loss mse``), inputs
  normalised with MNIST's mean 0.1307 and std 0.3081, batch 128.
AGD (Frobenius and spectral, gain 1) runs with no tuning; Adam and SGD get a small lr grid, and the best lr (by
seed 0's test accuracy; the grid runs at seed 0) runs at every seed. Every optimizer starts from AGD's initialisation (orthogonal
weights scaled by sqrt(d_out / d_in)), so the comparison is of optimizers, not of initialisations.
"""
import argparse
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

FIG = os.path.join(HERE, "figures")
DEPTHS = [2, 4, 8, 16]
ADAM_LRS = [1e-4, 1e-3, 1e-2]
SGD_LRS = [0.01, 0.1, 1.0]
PROTOCOLS = ("harness", "authors")
#: single-factor variants of the two, to find which difference matters: the loss swapped (-mse, -xent), the inputs
#: normalised or not (-norm, -raw)
ABLATIONS = ("harness-mse", "authors-xent", "harness-norm", "authors-raw")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class FCN(nn.Module):
    """Bias-free: ``depth`` linear layers of width ``width`` with tanh (harness) or ReLU * sqrt(2) (authors)."""

    def __init__(self, inputs, classes, depth, width, act):
        super().__init__()
        dims = [inputs] + [width] * (depth - 1) + [classes]
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))
        self.act = act

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = layer(x)
            x = torch.tanh(x) if self.act == "tanh" else torch.relu(x) * math.sqrt(2)
        return self.layers[-1](x)


def _authors(protocol):
    """ReLU * sqrt(2) (the authors' architecture), else tanh."""
    return protocol.startswith("authors")


def _normalised(protocol):
    """Inputs normalised with MNIST's mean and std (the authors' data), else pixels in [0, 1]."""
    return (_authors(protocol) and not protocol.endswith("-raw")) or protocol.endswith("-norm")


def _square_loss(protocol):
    return (_authors(protocol) and not protocol.endswith("-xent")) or protocol.endswith("-mse")


def loss_fn(protocol, out, y):
    if not _square_loss(protocol):
        return nn.functional.cross_entropy(out, y)
    target = nn.functional.one_hot(y, out.shape[1]).to(out.dtype) * math.sqrt(out.shape[1])
    return (out - target).square().mean()


def make_opt(name, lr, params):
    if name == "agd":
        return hf.AGD(params)
    if name == "agd.spectral":
        return hf.AGD(params, norm="spectral")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(name)


_DATA = {}


def run_one(job):
    protocol, depth, width, opt_name, lr, epochs, batch, seed, data_name = job
    torch.set_num_threads(1)
    if data_name not in _DATA:
        _DATA[data_name] = datasets.load(data_name)
    d = _DATA[data_name]
    xtr, xte = d.x_train, d.x_test
    if _normalised(protocol):
        xtr, xte = (xtr - MNIST_MEAN) / MNIST_STD, (xte - MNIST_MEAN) / MNIST_STD
    torch.manual_seed(seed)
    model = FCN(d.inputs, d.classes, depth, width, "relu" if _authors(protocol) else "tanh")
    hf.AGD(model.parameters()).init_weights(generator=torch.Generator().manual_seed(seed))
    opt = make_opt(opt_name, lr, model.parameters())
    g = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    diverged = False
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        ep = []
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(protocol, model(xtr[idx]), d.y_train[idx])
            loss.backward()
            opt.step()
            ep.append(loss.item())
        losses.append(statistics.fmean(ep))
        if not math.isfinite(losses[-1]):
            diverged = True
            break
    with torch.no_grad():
        out = model(xte)
        acc = float((out.argmax(1) == d.y_test).float().mean())
    return {"protocol": protocol, "depth": depth, "opt": opt_name, "lr": lr, "seed": seed,
            "test_acc": 0.0 if diverged else acc, "train_loss": losses[-1], "diverged": diverged,
            "seconds": time.perf_counter() - t0}


def run_all(jobs, workers):
    return run_pool(run_one, jobs, workers)


OPTIMIZERS = (("agd", [None]), ("agd.spectral", [None]), ("adam", ADAM_LRS), ("sgd", SGD_LRS))


def _best_lr(res, proto, depth, name, lrs):
    """The lr of the grid with the best seed-0 test accuracy (the grid runs at seed 0 only)."""
    acc = {r["lr"]: r["test_acc"] for r in res
           if (r["protocol"], r["depth"], r["opt"], r["seed"]) == (proto, depth, name, 0)}
    return max(lrs, key=lambda lr: acc.get(lr, -1.0))


def run_study(protocols, depths, width, epochs, batch, seeds, data, workers, optimizers=None):
    """Seed 0 runs every lr of the grids; the other seeds run AGD and each baseline's best lr of seed 0."""
    opts = OPTIMIZERS if optimizers is None else tuple(o for o in OPTIMIZERS if o[0] in optimizers)
    base = dict(width=width, epochs=epochs, batch=batch, data=data)

    def job(proto, depth, name, lr, seed):
        return (proto, depth, base["width"], name, lr, base["epochs"], base["batch"], seed, base["data"])
    jobs = [job(p, d, n, lr, 0) for p in protocols for d in depths for n, lrs in opts for lr in lrs]
    res = run_all(jobs, workers)
    if seeds > 1:
        more = [job(p, d, n, _best_lr(res, p, d, n, lrs), s) for p in protocols for d in depths
                for n, lrs in opts for s in range(1, seeds)]
        res += run_all(more, workers)
    return res


def summarise(res, protocols, depths, optimizers=None):
    """Per protocol and depth: AGD (both norms), and Adam / SGD at their best lr: mean and std over the seeds."""
    rows = []
    opts = OPTIMIZERS if optimizers is None else tuple(o for o in OPTIMIZERS if o[0] in optimizers)
    for proto in protocols:
        for depth in depths:
            for name, lrs in opts:
                lr = _best_lr(res, proto, depth, name, lrs)
                rs = [r for r in res if (r["protocol"], r["depth"], r["opt"], r["lr"]) == (proto, depth, name, lr)]
                accs = [100 * r["test_acc"] for r in rs]
                rows.append({"protocol": proto, "depth": depth, "opt": name, "lr": lr,
                             "acc": statistics.fmean(accs), "acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                             "loss": statistics.fmean(r["train_loss"] for r in rs), "n": len(rs),
                             "grid": {g: r["test_acc"] for g in lrs for r in res
                                      if (r["protocol"], r["depth"], r["opt"], r["lr"], r["seed"])
                                      == (proto, depth, name, g, 0)}})
    return rows


def plot(rows, protocols, depths, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4), sharey=True, squeeze=False)
    for ax, proto in zip(axes[0], protocols):
        for name, label in (("agd", "AGD"), ("agd.spectral", "AGD spectral"), ("adam", "Adam (best lr)"),
                            ("sgd", "SGD (best lr)")):
            pts = [r for r in rows if r["protocol"] == proto and r["opt"] == name]
            ax.errorbar([r["depth"] for r in pts], [r["acc"] for r in pts], yerr=[r["acc_std"] for r in pts],
                        marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(depths, [str(d) for d in depths])
        ax.set_xlabel("depth (linear layers)")
        ax.set_title(f"MNIST, {proto} protocol")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depths", type=int, nargs="+", default=DEPTHS)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=PROTOCOLS + ABLATIONS)
    ap.add_argument("--optimizers", nargs="+", choices=[o for o, _ in OPTIMIZERS],
                    help="a subset of the optimizers (default: all)")
    ap.add_argument("--data", default="mnist", choices=["mnist", "fashion-mnist", "digits"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a smoke run: digits, depths 2 and 4, width 32, 1 seed")
    ap.add_argument("--out", default=os.path.join(HERE, "agd_depth.md"))
    ap.add_argument("--json")
    ap.add_argument("--figures", default=FIG)
    args = ap.parse_args(argv)
    if args.quick:
        args.depths, args.width, args.epochs, args.seeds, args.data = [2, 4], 32, 1, 1, "digits"
    res = run_study(args.protocols, args.depths, args.width, args.epochs, args.batch, args.seeds, args.data,
                    args.workers, args.optimizers)
    rows = summarise(res, args.protocols, args.depths, args.optimizers)
    fig = "figures/agd_depth.png"
    plot(rows, args.protocols, args.depths, os.path.join(args.figures, os.path.basename(fig)))
    cmd = "python bench/agd_depth.py" + (" --quick" if args.quick else "")
    L = ["## AGD across depths, no tuning, against tuned Adam and SGD", "",
         f"Command: `{cmd}` (CPU, {args.workers} single-thread workers). {args.data}, bias-free fully connected "
         f"networks of width {args.width}, batch {args.batch}, {args.epochs} epochs, seeds 0-{args.seeds - 1} "
         "(weights and batch order); every optimizer starts from AGD's orthogonal initialisation. AGD: gain 1, no "
         f"tuning. Adam: best of lr {ADAM_LRS}; SGD: best of lr {SGD_LRS} (the grid runs at seed 0; its best lr "
         "then runs at the other seeds). "
         "Protocols: `harness` (tanh, cross-entropy, pixels in [0, 1]) and `authors` (the AGD authors' code: "
         "ReLU * sqrt(2), square loss against sqrt(10) * one-hot, normalised inputs). Figure: "
         f"[{fig}]({fig})", "",
         "| protocol | depth | optimizer | lr | test accuracy (mean ± std) | final train loss | grid at seed 0 |",
         "|---|---|---|---|---|---|---|"]
    for r in rows:
        lr = "auto" if r["lr"] is None else f"{r['lr']:g}"
        grid = "" if r["lr"] is None else ", ".join(f"{g:g}: {100 * a:.1f}%" for g, a in r["grid"].items())
        L.append(f"| {r['protocol']} | {r['depth']} | {r['opt']} | {lr} | {r['acc']:.2f}% ± {r['acc_std']:.2f} | "
                 f"{r['loss']:.4f} | {grid} |")
    L.append("")
    write_section(L, args.out, args.json, {"runs": res, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
