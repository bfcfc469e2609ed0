"""The paper's experiments at this machine's scale (Chandra et al., "Gradient Descent: The Ultimate Optimizer").

    python bench/paper_experiments.py        # writes bench/paper_experiments.md and bench/figures/

1. Table 1 at the paper's protocol (its MNIST model with the output tanh, batch 256, 30 epochs, 5 seeds): mean and
   standard deviation of the test error per row beside the paper's value.
2. Sensitivity to the initial learning rate at the same protocol: SGD towers of height 0 to 3, initial lr from 1e-6
   to 1 (one plot).
3. Exact vs one-pass hypergradients: bench/bench_onepass_mnist.py (run by make_results.py).
4. Character LSTM on the Shakespeare plays: Adam vs Adam/SGD, loss curves.
5. Peers in the same harness when installed (prodigyopt, dadaptation, schedulefree), and the paper's own package
   (its tower through its own loop) for time and memory per step.
Needs MNIST and the Shakespeare text in the cache (python -m hyperfused.data fetch mnist|shakespeare).
"""
import argparse
import copy
import importlib.util
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from hyperfused import data as datasets  # noqa: E402
from hyperfused import train  # noqa: E402
from _pool import run_pool  # noqa: E402

FIG = os.path.join(HERE, "figures")

TABLE1 = [  # (our spec, the paper's name, the paper's test error %)
    ("sgd(0.01)", "SGD", 8.99),
    ("sgd(0.01)/sgd(0.01)", "SGD / SGD", 4.81),
    ("adam(1e-3)", "Adam", 4.67),
    ("adam(1e-3)/sgd(1e-5)", "Adam / SGD(1e-5)", 3.03),
    ("adam[lr](1e-3)/sgd(1e-5)", "Adam^alpha / SGD(1e-5)", 3.12),
    ("adam(1e-3)/adam(1e-3)", "Adam / Adam", 3.05),
    ("adagrad(0.01)", "AdaGrad", 7.40),
    ("adagrad(0.01)/sgd(0.01)", "AdaGrad / SGD", 6.90),
    ("rmsprop(0.01)", "RMSprop", 4.19),
    ("rmsprop[lr,alpha](0.01)/sgd(1e-4)", "RMSprop^{alpha,gamma} / SGD(1e-4)", 3.33),
]


EARLY = 5       # the paper's own example (its repository's README) trains 5 epochs

# The paper's package starts Adam's v at eps and Adagrad's sum of squares at 0.1 (hyperfused's classes default
# to torch.optim's 0): every hyperfused tower here is built with the paper's conventions, as its Table 1 was.
CONVENTIONS = "paper"


def _run(data, specs, epochs, batch, model="mlp", hidden=128, seed=0, one_pass=False):
    torch.manual_seed(seed)
    inputs = data.inputs if data.x_train.is_floating_point() else data.classes
    base = train.make_model(model, inputs, data.classes, hidden)
    parsed = [train.parse_spec(text, conventions=CONVENTIONS) for text in specs]     # every spec before training
    out = []
    for spec in parsed:
        out.append(train.train_one(spec, copy.deepcopy(base), data, epochs, batch, seed, progress=False,
                                   one_pass=one_pass, conventions=CONVENTIONS))
    return out


# ------------------------------------------------------------------ many runs on a pool of single-thread workers
_DATA = {}


def _job(job):
    """One run: (data name, model, spec, epochs, batch, seed) -> its summary. The seed fixes the initial weights
    and the batch order, so every spec of one seed starts from the same weights and sees the same batches."""
    name, model, spec, epochs, batch, seed = job
    torch.set_num_threads(1)
    if name not in _DATA:
        _DATA[name] = datasets.load(name)
    data = _DATA[name]
    r = _run(data, [spec], epochs, batch, model=model, seed=seed)[0]
    return {"spec": spec, "seed": seed, "test_error": r.test_error, "final_loss": r.final_loss,
            "lr": float(r.levels[0]["lr"]), "ms_per_step": r.ms_per_step,
            "curve": [e["test_error"] for e in r.epochs]}


def run_jobs(jobs, workers):
    """Every job, on ``workers`` processes (1: in this process); results in the order of ``jobs``."""
    return run_pool(_job, jobs, workers)


def _mean_std(xs):
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def exp1(epochs, seeds, workers, model="paper-mlp", data="mnist"):
    """Table 1: every row at ``seeds`` seeds; mean and standard deviation beside the paper's value, and a flag
    where the mean is further from the paper than 2 standard deviations or 0.3 points (whichever is larger)."""
    jobs = [(data, model, spec, epochs, 256, seed) for seed in range(seeds) for spec, _, _ in TABLE1]
    res = run_jobs(jobs, workers)
    by = {spec: [r for r in res if r["spec"] == spec] for spec, _, _ in TABLE1}
    lines = ["### 1. Table 1 at the paper's protocol", "",
             f"The paper's MNIST model and pipeline (`--model {model}`: 784-128-10, tanh after both layers, then "
             "log_softmax and NLL; pixels in [0, 1], no normalisation; torch's default kaiming_uniform(a=sqrt(5)) "
             f"initialisation; batch 256, reshuffled every epoch), {epochs} epochs, seeds 0-{seeds - 1} (a seed "
             "fixes the initial weights and the batch order; every row of one seed shares them), the paper's "
             "conventions (Adam's v starts at eps, Adagrad's sum at 0.1). Initial hyperparameters: the paper's "
             "package's defaults (SGD and Adagrad lr 0.01, RMSprop lr 0.01 with gamma 0.99, Adam lr 1e-3 with betas "
             "0.9 / 0.999); the step size of each level above is the one named in the row's label in Table 1. "
             "`off` marks a row whose mean is further from the paper than max(2 std, 0.3 points).", "",
             "| optimizer (spec) | paper's name | test error, mean ± std | paper | mean - paper | | learned lr (mean) "
             f"| after {EARLY} epochs | first epoch at or below the paper (mean curve) |",
             "|---|---|---|---|---|---|---|---|---|"]
    summary = {}
    for spec, name, paper in TABLE1:
        errs = [100 * r["test_error"] for r in by[spec]]
        m, sd = _mean_std(errs)
        off = abs(m - paper) > max(2 * sd, 0.3)
        lr = statistics.fmean(r["lr"] for r in by[spec])
        curve = [100 * statistics.fmean(c) for c in zip(*(r["curve"] for r in by[spec]))]   # mean over seeds
        early = [100 * r["curve"][EARLY - 1] for r in by[spec]] if len(curve) >= EARLY else []
        first = next((e + 1 for e, v in enumerate(curve) if v <= paper), None)
        summary[spec] = {"mean": m, "std": sd, "paper": paper, "off": off, "errors": errs, "lr": lr, "curve": curve,
                         "first": first}
        early_txt = "{:.2f}% ± {:.2f}".format(*_mean_std(early)) if early else "n/a"
        lines.append(f"| `{spec}` | {name} | {m:.2f}% ± {sd:.2f} | {paper:.2f}% | {m - paper:+.2f} | "
                     f"{'off' if off else ''} | {lr:.4g} | {early_txt} | {first if first else '-'} |")
    return lines, summary


# Table 1's rows as the paper's own package builds them (its class defaults: SGD 0.01, Adam 1e-3 / 0.9 / 0.999 with
# v starting at eps, AdaGrad 0.01, RMSProp 0.01 / gamma 0.99 learning both), for the check that the package,
# through its own loop, lands where hyperfused does
PACKAGE_ROWS = {
    "sgd(0.01)": lambda g: g.SGD(0.01),
    "sgd(0.01)/sgd(0.01)": lambda g: g.SGD(0.01, optimizer=g.SGD(0.01)),
    "adam(1e-3)": lambda g: g.Adam(),
    "adam(1e-3)/sgd(1e-5)": lambda g: g.Adam(optimizer=g.SGD(1e-5)),
    "adam[lr](1e-3)/sgd(1e-5)": lambda g: g.AdamBaydin(optimizer=g.SGD(1e-5)),
    "adam(1e-3)/adam(1e-3)": lambda g: g.Adam(optimizer=g.Adam()),
    "adagrad(0.01)": lambda g: g.AdaGrad(),
    "adagrad(0.01)/sgd(0.01)": lambda g: g.AdaGrad(optimizer=g.SGD(0.01)),
    "rmsprop(0.01)": lambda g: g.RMSProp(),
    "rmsprop[lr,alpha](0.01)/sgd(1e-4)": lambda g: g.RMSProp(optimizer=g.SGD(1e-4)),
}


def _package_job(job):
    """One run of the paper's package through its own loop (ModuleWrapper, create_graph=True), on the same model,
    initial weights and batches as hyperfused's run of that seed."""
    from gradient_descent_the_ultimate_optimizer import gdtuo
    name, model, spec, epochs, batch, seed = job
    torch.set_num_threads(1)
    if name not in _DATA:
        _DATA[name] = datasets.load(name)
    data = _DATA[name]
    torch.manual_seed(seed)
    net = train.make_model(model, data.inputs, data.classes, 128)
    mw = gdtuo.ModuleWrapper(net, optimizer=PACKAGE_ROWS[spec](gdtuo))
    mw.initialize()
    g = torch.Generator().manual_seed(seed)      # train_one's batch order
    for _ in range(epochs):
        perm = torch.randperm(len(data.x_train), generator=g)
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            mw.begin()
            loss = nn.functional.cross_entropy(mw.forward(data.x_train[idx]), data.y_train[idx])
            mw.zero_grad()
            loss.backward(create_graph=True)
            mw.step()
    mw.end() if hasattr(mw, "end") else None
    with torch.no_grad():
        err = float((net(data.x_test).argmax(1) != data.y_test).float().mean())
    return {"spec": spec, "seed": seed, "test_error": err}


def exp1_package(epochs, seeds, workers, summary=None, model="paper-mlp", data="mnist"):
    """The paper's package on the rows of PACKAGE_ROWS at seeds 0..seeds-1, beside hyperfused's runs of the same
    seeds (``summary``: exp1's, whose per-seed errors are in seed order)."""
    jobs = [(data, model, spec, epochs, 256, seed) for seed in range(seeds) for spec in PACKAGE_ROWS]
    res = run_pool(_package_job, jobs, workers)
    lines = ["#### The paper's own package on the same runs", "",
             f"The paper's package (gradient-descent-the-ultimate-optimizer 1.0) through its own loop (ModuleWrapper, "
             f"`backward(create_graph=True)`), same model, initial weights and batches, seeds 0-{seeds - 1}, "
             f"{epochs} epochs; beside it hyperfused's runs of the same seeds from the table above.", "",
             "| optimizer (spec) | package: test error per seed | hyperfused, same seeds | paper |", "|---|---|---|---|"]
    paper = {spec: v for spec, _, v in TABLE1}
    out = {}
    for spec in PACKAGE_ROWS:
        errs = [100 * r["test_error"] for r in res if r["spec"] == spec]
        ours = summary[spec]["errors"][:seeds] if summary else []
        out[spec] = (errs, ours)
        lines.append(f"| `{spec}` | {', '.join(f'{e:.2f}%' for e in errs)} | "
                     f"{', '.join(f'{e:.2f}%' for e in ours) or 'n/a'} | {paper[spec]:.2f}% |")
    return lines, out


SWEEP_LRS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
SWEEP_HEIGHTS = [0, 1, 2, 3]


def exp2(epochs, seeds, workers, model="paper-mlp", lrs=SWEEP_LRS, heights=SWEEP_HEIGHTS, data="mnist", figures=FIG):
    """Sensitivity to the initial lr: SGD towers of height 0-3 (every level above SGD(0.01)), mean over seeds."""
    specs = {(h, lr): "/".join([f"sgd({lr:g})"] + ["sgd(0.01)"] * h) for h in heights for lr in lrs}
    jobs = [(data, model, spec, epochs, 256, seed) for seed in range(seeds) for spec in specs.values()]
    res = run_jobs(jobs, workers)
    grid = {}
    for (h, lr), spec in specs.items():
        errs = [100 * r["test_error"] for r in res if r["spec"] == spec]
        grid[(h, lr)] = _mean_std(errs)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(figures, exist_ok=True)
    path = os.path.join(figures, "lr_sensitivity.png")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for h in heights:
        ms = [grid[(h, lr)][0] for lr in lrs]
        sds = [grid[(h, lr)][1] for lr in lrs]
        ax.errorbar(lrs, ms, yerr=sds, marker="o", capsize=3,
                    label=f"height {h}" + (" (plain SGD)" if h == 0 else ""))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("initial learning rate of level 0")
    ax.set_ylabel(f"test error after {epochs} epochs (%)")
    ax.set_title(f"SGD towers (each level above: SGD(0.01)), {model}, {seeds} seed(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    lines = ["### 2. Sensitivity to the initial learning rate (SGD towers)", "",
             f"Same protocol as experiment 1 (`--model {model}`, batch 256, {epochs} epochs, seeds 0-{seeds - 1}, "
             "mean ± std of the test error); every level above level 0 is SGD(0.01). Plot: "
             "[figures/lr_sensitivity.png](figures/lr_sensitivity.png)", "",
             "| height | " + " | ".join(f"lr0={lr:g}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for h in heights:
        lines.append(f"| {h} | " + " | ".join(f"{grid[(h, lr)][0]:.1f}% ± {grid[(h, lr)][1]:.1f}" for lr in lrs)
                     + " |")
    return lines, grid


def exp4(shakespeare, epochs):
    specs = ["adam(2e-3)", "adam(2e-3)/sgd(1e-5)"]
    res = _run(shakespeare, specs, epochs, 64, model="charrnn", hidden=128)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from hyperfused.report import _smooth
    os.makedirs(FIG, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in res:
        losses = [s["loss"] for s in r.steps]
        ax.plot(range(1, len(losses) + 1), _smooth(losses, 25), label=r.spec)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/char, moving average)")
    ax.set_title("character LSTM on Shakespeare")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(FIG, "shakespeare_loss.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    lines = ["### 4. Character LSTM on the Shakespeare plays", "",
             f"Embedding 64, LSTM 128, first 1M characters of the plays in sequences of 64, batch 64, {epochs} "
             "epochs (the paper uses Tolstoy's War and Peace, not available here). Loss curves: "
             "[figures/shakespeare_loss.png](figures/shakespeare_loss.png)", "",
             "| optimizer | final train loss | test loss | test char error | learned lr |", "|---|---|---|---|---|"]
    for r in res:
        lines.append(f"| `{r.spec}` | {r.final_loss:.3f} | {r.test_loss:.3f} | {100 * r.test_error:.1f}% | "
                     f"{r.levels[0]['lr']:.4g} |")
    return lines, res


def _paper_package_run(mnist, steps):
    """The paper's package, Adam/SGD(1e-5), through its own loop on the MNIST MLP: ms/step and memory."""
    from gradient_descent_the_ultimate_optimizer import gdtuo
    torch.manual_seed(0)
    model = train.make_model("mlp", 784, 10, 128)
    mw = gdtuo.ModuleWrapper(model, optimizer=gdtuo.Adam(optimizer=gdtuo.SGD(1e-5)))
    mw.initialize()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(mnist.x_train), generator=g)
    times = []
    with train._PeakMemory("cpu") as mem:
        for i in range(steps):
            idx = perm[(i * 256) % 59904:(i * 256) % 59904 + 256]
            t0 = time.perf_counter()
            mw.begin()
            mw.zero_grad()
            loss = nn.functional.cross_entropy(mw.forward(mnist.x_train[idx]), mnist.y_train[idx])
            loss.backward(create_graph=True)
            mw.step()
            times.append(time.perf_counter() - t0)
        peak = mem.growth_mb()
    return 1e3 * statistics.median(times), peak


def exp5(mnist, epochs):
    peers = [("prodigy", "prodigyopt"), ("dadapt.adam", "dadaptation"), ("schedulefree.adamw(1e-3)", "schedulefree")]
    specs = ["adam(1e-3)", "adam(1e-3)/sgd(1e-5)", "torch.adam(1e-3)"]
    missing = []
    for spec, module in peers:
        if importlib.util.find_spec(module) is not None:
            specs.append(spec)
        else:
            missing.append(module)
    res = _run(mnist, specs, epochs, 256)
    lines = ["### 5. Peers in the same harness (MNIST MLP 784-128-10, batch 256)", "",
             f"{epochs} epochs, no tuning (each at its package's default or documented lr)."
             + (f" Not installed, so not run: {', '.join(missing)}." if missing else ""), "",
             "| optimizer | test error | final loss | ms/step |", "|---|---|---|---|"]
    for r in res:
        lines.append(f"| `{r.spec}` | {100 * r.test_error:.2f}% | {r.final_loss:.4f} | {r.ms_per_step:.2f} |")
    if importlib.util.find_spec("gradient_descent_the_ultimate_optimizer") is not None:
        ms, peak = _paper_package_run(mnist, 200)
        ours = res[1]
        lines += ["", f"The paper's package, Adam / SGD(1e-5) through its own loop (`create_graph=True`), 200 steps "
                  f"of the same model and batch size: {ms:.2f} ms/step ({ms / ours.ms_per_step:.1f}x "
                  f"hyperfused's `adam(1e-3)/sgd(1e-5)` above). This model is too small for a memory comparison "
                  f"(its optimizer state is under 1 MB); the 784-2048-2048-10 benchmark above compares memory."]
    return lines, res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=30, help="MNIST epochs of experiments 1 and 2 (the paper's 30)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per row of experiment 1")
    ap.add_argument("--sweep-seeds", type=int, default=2, help="seeds per cell of experiment 2")
    ap.add_argument("--peer-epochs", type=int, default=10, help="MNIST epochs of experiment 5")
    ap.add_argument("--workers", type=int, default=2, help="processes running experiments 1 and 2 (one thread each)")
    ap.add_argument("--text-epochs", type=int, default=2, help="epochs of experiment 4")
    ap.add_argument("--fetch", action="store_true")
    ap.add_argument("--only", nargs="*", type=int, choices=[1, 2, 4, 5])
    ap.add_argument("--package-seeds", type=int, default=2,
                    help="seeds of the paper's package's own runs beside experiment 1 (0: none)")
    ap.add_argument("--out", default=os.path.join(HERE, "paper_experiments.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    which = args.only or [1, 2, 4, 5]
    lines = ["## The paper's experiments at this machine's scale", "",
             f"Command: `python bench/paper_experiments.py --epochs {args.epochs} --seeds {args.seeds} "
             f"--sweep-seeds {args.sweep_seeds} --peer-epochs {args.peer_epochs} --text-epochs {args.text_epochs}`"
             + (f" --only {' '.join(map(str, which))}" if args.only else "")
             + f" (CPU, {args.workers} single-thread workers). Experiment 3 (exact vs one-pass) is in the "
             "section above.", ""]
    mnist = datasets.load("mnist", fetch=args.fetch)
    if 1 in which:
        l1, summary = exp1(args.epochs, args.seeds, args.workers)
        lines += l1 + [""]
        if args.package_seeds:
            lines += exp1_package(args.epochs, args.package_seeds, args.workers, summary)[0] + [""]
    if 2 in which:
        lines += exp2(args.epochs, args.sweep_seeds, args.workers)[0] + [""]
    if 4 in which:
        lines += exp4(datasets.load("shakespeare", fetch=args.fetch), args.text_epochs)[0] + [""]
    if 5 in which:
        lines += exp5(mnist, args.peer_epochs)[0] + [""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
