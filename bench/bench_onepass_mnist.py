"""Exact vs one-pass hypergradients on the paper's MNIST MLP (784-128-10, tanh, batch 256).

    python bench/bench_onepass_mnist.py --epochs 3

Runs the training command (same initial weights and batch order for every run) for Adam/SGD(1e-5) and
SGD(0.01)/SGD(0.01) in both modes and prints final loss and test error side by side. Needs MNIST in the cache
(python -m hyperfused.data fetch mnist, or --fetch).
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from hyperfused import train  # noqa: E402

SPECS = ["adam(1e-3)/sgd(1e-5)", "sgd(0.01)/sgd(0.01)"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fetch", action="store_true")
    ap.add_argument("--json", help="write the table here")
    args = ap.parse_args(argv)
    rows = []
    for mode in ("exact", "one-pass"):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "r.json")
            cmd = ["--data", "mnist", "--epochs", str(args.epochs), "--batch-size", "256", "--hidden", "128",
                   "--seed", str(args.seed), "--no-progress", "--json", out] + sum((["--opt", s] for s in SPECS), [])
            if mode == "one-pass":
                cmd.append("--one-pass")
            if args.fetch:
                cmd.append("--fetch")
            train.main(cmd)
            with open(out) as f:
                res = json.load(f)["results"]
        for r in res:
            rows.append({"spec": r["spec"], "mode": mode, "test_error": r["test_error"], "final_loss": r["final_loss"],
                         "ms_per_step": r["ms_per_step"], "lr": r["levels"][0]["lr"]})
    print(f"\nMNIST MLP 784-128-10 tanh, batch 256, {args.epochs} epochs, seed {args.seed}")
    print(f"{'optimizer':<24} {'mode':<9} {'test error':>10} {'final loss':>10} {'learned lr':>11} {'ms/step':>8}")
    for r in rows:
        print(f"{r['spec']:<24} {r['mode']:<9} {100 * r['test_error']:9.2f}% {r['final_loss']:10.4f} "
              f"{r['lr']:11.4g} {r['ms_per_step']:8.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"epochs": args.epochs, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
