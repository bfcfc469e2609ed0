"""Whole training step of a 784-2048-2048-10 MLP (batch 256): time and peak memory growth, side by side.

    python bench/bench_mlp_step.py --threads 2 --reps 30

Time: every configuration in one process, round-robin (one step of each in turn), median of --reps steps
(zero_grad, forward, backward, optimizer step). Memory: each configuration in a fresh process; the growth of
peak resident memory (VmHWM, reset through /proc/self/clear_refs after the model and data exist) over --mem-steps
training steps: optimizer state plus whatever the optimizer keeps alive (the paper's package keeps an autograd
graph of the optimizer step).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import hyperfused as hf  # noqa: E402

try:
    from gradient_descent_the_ultimate_optimizer import gdtuo
except ImportError:   # optional: the paper's package
    gdtuo = None

CONFIGS = ["torch Adam fused", "hf Adam/SGD exact", "hf Adam/SGD one-pass", "paper Adam/SGD"]


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 2048), nn.Tanh(), nn.Linear(2048, 2048), nn.Tanh(), nn.Linear(2048, 10))
    x = torch.randn(256, 784)
    y = torch.randint(0, 10, (256,))
    return model, x, y


def make_step(name, model, x, y):
    """A function that runs one whole training step."""
    loss_fn = nn.functional.cross_entropy
    if name == "paper Adam/SGD":
        if gdtuo is None:
            return None
        mw = gdtuo.ModuleWrapper(model, optimizer=gdtuo.Adam(optimizer=gdtuo.SGD(1e-5)))
        mw.initialize()

        def step():
            mw.begin()
            mw.zero_grad()
            loss = loss_fn(mw.forward(x), y)
            loss.backward(create_graph=True)
            mw.step()
        return step
    if name == "torch Adam fused":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    elif name == "hf Adam/SGD exact":
        opt = hf.Adam(model.parameters(), lr=1e-3, hyper=hf.SGD(lr=1e-5), backend="cpu")
    elif name == "hf Adam/SGD one-pass":
        opt = hf.Adam(model.parameters(), lr=1e-3, hyper=hf.SGD(lr=1e-5), backend="cpu", one_pass=True)
    else:
        raise ValueError(name)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def _status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def memory_child(name, steps):
    model, x, y = model_and_data()
    step = make_step(name, model, x, y)
    if step is None:
        print(json.dumps(None))
        return
    with torch.no_grad():
        model(x)
    base = _status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")          # reset the peak (VmHWM) to the current resident size
    except OSError:
        pass
    for _ in range(steps):
        step()
    print(json.dumps({"growth_mb": (_status("VmHWM") - base) / 2 ** 20}))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mem-steps", type=int, default=10)
    ap.add_argument("--json")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.mem_steps)

    steps = {}
    for name in CONFIGS:
        model, x, y = model_and_data()
        s = make_step(name, model, x, y)
        if s is not None:
            steps[name] = s
    times = {name: [] for name in steps}
    for _ in range(args.warmup):
        for s in steps.values():
            s()
    for _ in range(args.reps):
        for name, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[name].append(time.perf_counter() - t0)
    mem = {}
    for name in steps:
        out = subprocess.run([sys.executable, __file__, "--memory-child", name, "--threads", str(args.threads),
                              "--mem-steps", str(args.mem_steps)], capture_output=True, text=True, check=True)
        mem[name] = json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]
    base_t = statistics.median(times["torch Adam fused"])
    base_m = mem["torch Adam fused"]
    rows = []
    print(f"784-2048-2048-10 MLP, batch 256, {args.threads} threads, median of {args.reps} round-robin steps; "
          f"peak memory growth over {args.mem_steps} steps in a fresh process")
    print(f"{'configuration':<24} {'ms/step':>9} {'vs torch':>9} {'peak growth MB':>15} {'vs torch':>9}")
    for name in steps:
        t = statistics.median(times[name])
        rows.append({"config": name, "ms_per_step": 1e3 * t, "time_ratio": t / base_t, "peak_growth_mb": mem[name],
                     "memory_ratio": mem[name] / base_m if base_m > 0 else None})
        r = rows[-1]
        mr = f"{r['memory_ratio']:.2f}x" if r["memory_ratio"] is not None else "n/a"
        print(f"{name:<24} {r['ms_per_step']:9.2f} {r['time_ratio']:8.2f}x {r['peak_growth_mb']:15.1f} {mr:>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "reps": args.reps, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
