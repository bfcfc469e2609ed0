"""Mutation run: does the suite fail when the code is wrong?

    python tests/mutations.py                  # every mutation below; prints the Markdown table
    python tests/mutations.py --only M03 M08   # some of them
    python tests/mutations.py --list           # the list, without running

Each mutation is one plausible bug (a sign, a missing term, a skipped check, a stale value) in one place:
the reference (hyperfused/ops/reference.py), the optimizer (hyperfused/optim/base.py), the shared C++ math
(csrc/hyperfused/hyper_math.h), the CPU loops, the Triton kernels and AGD. For each, the tree is copied to a
temporary folder (with the built extension; C++ mutations rebuild it there, a few minutes each on 2 cores), the
snippet is replaced (it must occur exactly once), the tests named for it run there (stopping at the first
failure), and the row says whether they failed (caught) or passed (survived), against what is expected.
tests/MUTATIONS.md holds the table of the last full run. Exit status 1 when a mutation expected to be caught
survived. Not part of the test suite (it takes long); tests/test_mutations_smoke.py runs two mutations.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutation:
    id: str
    what: str
    path: str
    old: str
    new: str
    tests: List[str]
    k: str = ""                       # pytest -k expression ("" for all)
    expect: str = "caught"            # or "survives: <why that is accepted>"
    extra: List[str] = field(default_factory=list)

    @property
    def cpp(self) -> bool:
        return self.path.startswith("csrc/")


# (path, old, new) of M13 and M14: the same bug, run against the new oracle and against the older tests alone
STALE_ONE_PASS = ("hyperfused/optim/base.py",
                  "                used = self._rows(rec[\"used\"], plan[\"index\"], per0)",
                  "                used = self._rows(rec[\"hp\"], plan[\"index\"], per0)")

MUTATIONS = [
    Mutation("M01", "reference Adam update without bias correction of m", "hyperfused/ops/reference.py",
             "    mh = m / _bias(b1, t, g.dtype)\n", "    mh = m\n",
             ["tests/test_optim_vs_paper.py"], k="adam"),
    Mutation("M02", "reference Adam beta2 Jacobian with the wrong sign", "hyperfused/ops/reference.py",
             "        J[\"beta2\"] = torch.where(zero, torch.zeros_like(term), term)",
             "        J[\"beta2\"] = torch.where(zero, torch.zeros_like(term), -term)",
             ["tests/test_reference_jacobians.py"]),
    Mutation("M03", "pass A never sees a non-finite gradient (reference backend)", "hyperfused/ops/reference.py",
             "        finite = finite & torch.isfinite(g).all()", "        finite = finite",
             ["tests/test_skip_contract.py"], k="reference"),
    Mutation("M04", "the Python tower accepts non-finite new hyperparameters", "hyperfused/ops/reference.py",
             "            new_hp[k - 1][name] = t\n            ok = ok & torch.isfinite(t).all()\n",
             "            new_hp[k - 1][name] = t\n",
             ["tests/test_skip_contract.py"]),
    Mutation("M05", "GradScaler's found_inf ignored", "hyperfused/optim/base.py",
             "        scaler_ok = None if found_inf is None else (found_inf == 0)", "        scaler_ok = None",
             ["tests/test_skip_contract.py"]),
    Mutation("M06", "the reference commits the new state of a skipped step", "hyperfused/ops/reference.py",
             "    vals = {key: torch.where(ok, val.to(st[key].dtype), st[key]) for key, val in new.items()}",
             "    vals = {key: val.to(st[key].dtype) for key, val in new.items()}",
             ["tests/test_skip_contract.py"], k="reference"),
    Mutation("M07", "C++ Adam beta2 Jacobian sign, folded form (CPU float32/float64 vector loops)",
             "csrc/hyperfused/hyper_math.h",
             "  const T term = k.nhlrd2 * (j_lr * rden) * dvh / S;",
             "  const T term = -(k.nhlrd2 * (j_lr * rden) * dvh / S);",
             ["tests/test_hypergradient_precision.py", "tests/test_cpu_kernels.py"], k="cpu"),
    Mutation("M08", "C++ Adam beta2 Jacobian sign, plain form (CPU half/bfloat16 loops, CUDA)",
             "csrc/hyperfused/hyper_math.h",
             "  const T term = c.lr * mh * (rden * rden) / (T(2) * S) * dvh * c.dsig2;",
             "  const T term = -(c.lr * mh * (rden * rden) / (T(2) * S) * dvh * c.dsig2);",
             ["tests/test_hypergradient_precision.py"], k="cpu"),
    Mutation("M09", "CPU vector loop counts no non-finite gradient", "csrc/cpu/hyper_loops.h",
             "    bad = bad + (gv - gv).ne(Vec(0));", "    bad = bad;",
             ["tests/test_skip_contract.py"], k="cpu and long_tensor"),
    Mutation("M10", "Triton Adam beta2 Jacobian with the wrong sign", "hyperfused/ops/triton/hyper.py",
             "            term = lr * mh * (rden * rden) / (2.0 * S) * dvh * dsig2",
             "            term = -(lr * mh * (rden * rden) / (2.0 * S) * dvh * dsig2)",
             ["tests/test_hypergradient_precision.py"], k="triton"),
    Mutation("M13", "one-pass Jacobian evaluated with the new instead of the previous hyperparameters",
             *STALE_ONE_PASS, ["tests/test_one_pass_oracle.py"], k="cpu"),
    Mutation("M14", "one-pass oracle: old tests alone (the stale-hyperparameter bug of M13)",
             *STALE_ONE_PASS, ["tests/test_cpu_kernels.py"], k="one_pass or one-pass",
             expect="survives: the backends are compared with the reference, which shares base.py"),
    Mutation("M15", "the Python tower's check of the hypergradients themselves removed", "hyperfused/ops/reference.py",
             "    ok = finite\n    for d in deltas:\n        ok = ok & torch.isfinite(d).all()\n",
             "    ok = finite\n",
             ["tests/test_skip_contract.py"], k="reference",
             expect="survives: a non-finite hypergradient always makes a new hyperparameter non-finite, which the "
                    "next check catches (kept as defence in depth)"),
    Mutation("M11", "AGD ignores its gain", "hyperfused/optim/agd.py",
             "        super().__init__(params, dict(gain=float(gain)))",
             "        super().__init__(params, dict(gain=1.0))",
             ["tests/test_agd.py"], k="gain"),
    Mutation("M12", "power iteration without the clamp to [norm_F / sqrt(rank), norm_F]", "hyperfused/ops/agd.py",
             "        sigma = torch.where(nonzero, torch.minimum(torch.maximum(sigma, fro / math.sqrt(rank)), fro), "
             "sigma)",
             "        sigma = torch.where(nonzero, sigma, sigma)",
             ["tests/test_agd.py"], k="clamp"),
]
MUTATIONS.sort(key=lambda m: m.id)


def _copy_tree(dst: str, with_build: bool) -> None:
    skip = {".git", ".venv", ".venv-cuda", "gpu-out", "runs", ".whl", ".pytest_cache", ".benchmarks"}
    if not with_build:
        skip.add("build")

    def ignore(folder, names):
        return [n for n in names if n in skip or n == "__pycache__" or n.endswith(".egg-info")]
    shutil.copytree(ROOT, dst, ignore=ignore, symlinks=True)


def run_one(m: Mutation, python: str, timeout: int) -> dict:
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix=f"hf-{m.id}-") as tmp:
        tree = os.path.join(tmp, "tree")
        _copy_tree(tree, with_build=m.cpp)
        path = os.path.join(tree, m.path)
        text = open(path).read()
        if text.count(m.old) != 1:
            return {"id": m.id, "result": "error", "detail": f"snippet found {text.count(m.old)} times in {m.path}",
                    "seconds": time.time() - t0}
        with open(path, "w") as f:
            f.write(text.replace(m.old, m.new))
        env = dict(os.environ, PYTHONPATH=tree, PYTHONDONTWRITEBYTECODE="1")
        if m.cpp:
            b = subprocess.run([python, "setup.py", "build_ext", "--inplace"], cwd=tree, capture_output=True,
                               text=True, env=dict(env, HYPERFUSED_CUDA="0"), timeout=3600)
            if b.returncode != 0:
                return {"id": m.id, "result": "caught (build)", "detail": b.stderr[-300:], "seconds": time.time() - t0}
        where = subprocess.run([python, "-c", "import hyperfused; print(hyperfused.__file__)"], cwd=tree, env=env,
                               capture_output=True, text=True)
        if not where.stdout.startswith(tree):
            return {"id": m.id, "result": "error", "detail": f"imported {where.stdout.strip()} instead of the copy",
                    "seconds": time.time() - t0}
        missing = [t for t in m.tests if not os.path.exists(os.path.join(tree, t.split("::")[0]))]
        if missing:
            return {"id": m.id, "result": "error", "detail": f"no such tests: {missing}", "seconds": time.time() - t0}
        cmd = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests, *m.extra]
        if m.k:
            cmd += ["-k", m.k]
        try:
            r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"id": m.id, "result": "error", "detail": f"tests ran past {timeout} s", "seconds": time.time() - t0}
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        summary = lines[-1] if lines else r.stderr[-200:]
        failed = [ln.split(" - ")[0].replace("FAILED ", "") for ln in r.stdout.splitlines() if ln.startswith("FAILED")]
        if r.returncode == 0:
            result = "survived"
        elif r.returncode == 1:
            result = "caught"
        elif r.returncode == 5:
            result = "error"
            summary = "no test selected: " + summary
        else:
            result = "caught (error)"
        return {"id": m.id, "result": result, "detail": (failed[0] if failed else summary)[:200],
                "seconds": time.time() - t0}


def table(rows, by_id) -> str:
    out = ["| id | mutation | where | tests run | expected | result | first failure / summary |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = by_id[r["id"]]
        tests = ", ".join(os.path.basename(t) for t in m.tests) + (f" (-k {m.k})" if m.k else "")
        out.append(f"| {m.id} | {m.what.replace('|', '/')} | `{m.path}` | {tests} | {m.expect} | {r['result']} | "
                   f"{r['detail'].replace('|', '/')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="mutation ids")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=int, default=900, help="seconds for one mutation's tests")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    by_id = {m.id: m for m in MUTATIONS}
    unknown = [i for i in (args.only or []) if i not in by_id]
    if unknown:
        ap.error(f"unknown mutation ids {unknown}; known: {', '.join(by_id)}")
    chosen = [by_id[i] for i in args.only] if args.only else MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.id}  {m.path:<36} {m.what}")
        return 0
    rows = []
    for m in chosen:
        r = run_one(m, args.python, args.timeout)
        rows.append(r)
        print(f"{m.id} {r['result']:<15} {r['seconds']:6.0f} s  {m.what}: {r['detail']}", flush=True)
    print()
    print(table(rows, by_id))
    bad = [r for r in rows if by_id[r["id"]].expect == "caught" and not r["result"].startswith("caught")]
    if bad:
        print(f"\nnot caught as expected: {', '.join(r['id'] for r in bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
