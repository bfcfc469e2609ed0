"""The training command's faults: progress output, argument checks that come before any training, exit statuses."""
import io
import math
import os
import sys

import pytest
import torch

from hyperfused import train


class FakeTTY(io.StringIO):
    """A captured stream that says it is a terminal, as a user's console does."""

    def isatty(self):
        return True


def test_agd_runs_with_the_progress_bar(monkeypatch):
    """AGD's param groups have no 'lr': the bar shows its eta instead of failing with KeyError."""
    pytest.importorskip("tqdm")
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    res = train.run(["--data", "synthetic", "--epochs", "1", "--opt", "agd"])
    assert res[0].spec == "agd"
    assert "eta=" in err.getvalue() and "\r" in err.getvalue()      # the bar ran, showing eta


def test_postfix_of_an_optimizer_without_lr():
    class NoLr(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, dict(gain=1.0))

        def step(self, closure=None):
            return None

    opt = NoLr([torch.zeros(2, requires_grad=True)])
    assert train._levels_of(opt) == [{}]
    assert train._postfix(0.5, train._levels_of(opt)) == {"loss": "0.5000"}
    sgd = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.25)
    assert train._postfix(0.5, train._levels_of(sgd)) == {"loss": "0.5000", "lr": "0.25"}


def _epoch_lines(text):
    return [ln for ln in text.splitlines() if ": epoch " in ln]


def test_progress_to_a_log_is_one_plain_line_per_epoch(capsys):
    """Captured stderr is not a terminal (like a log file): no bar redraws, one line per run and epoch."""
    pytest.importorskip("tqdm")
    train.main(["--data", "synthetic", "--epochs", "2", "--opt", "sgd(0.05)", "--opt", "adam(1e-3)/sgd(1e-5)"])
    err = capsys.readouterr().err
    assert "\r" not in err and "it/s" not in err
    lines = _epoch_lines(err)
    assert [ln.split(":")[0] for ln in lines] == ["sgd(0.05)"] * 2 + ["adam(1e-3)/sgd(1e-5)"] * 2
    assert "epoch 1/2" in lines[0] and "epoch 2/2" in lines[1] and "test error" in lines[1]
    assert "L1: lr=" in lines[3]                      # the learned hyperparameters of every level


def test_no_progress_is_silent(capsys):
    train.main(["--data", "synthetic", "--epochs", "1", "--opt", "sgd(0.05)", "--no-progress"])
    assert capsys.readouterr().err == ""


def test_missing_tqdm_warns_once_naming_the_extra_then_plain_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)          # import tqdm raises ImportError
    err = FakeTTY()
    monkeypatch.setattr(sys, "stderr", err)
    train.main(["--data", "synthetic", "--epochs", "2", "--opt", "sgd(0.05)", "--opt", "adam(1e-3)"])
    text = err.getvalue()
    assert text.count("tqdm is not installed") == 1
    assert "pip install 'hyperfused[train]'" in text
    assert len(_epoch_lines(text)) == 4 and "\r" not in text


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if the command gets as far as loading data or training."""
    def boom(*a, **kw):
        raise AssertionError("the command went on to load data / train")
    monkeypatch.setattr(train.datasets, "load", boom)
    monkeypatch.setattr(train, "train_one", boom)


def _fails_at_parsing(argv, capsys):
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("flag,make,problem", [
    ("--out", lambda t: (t / "f").write_text("x") and t / "f", "it is a file, not a directory"),
    ("--out", lambda t: (t / "f").write_text("x") and t / "f" / "sub" / "dir",
     "is a file (or a broken link), so no directory can be created under it"),
    ("--json", lambda t: t, "it is a directory, not a file"),
    ("--json", lambda t: (t / "f").write_text("x") and t / "f" / "r.json",
     "is a file (or a broken link), so no file can be created under it"),
])
def test_unusable_output_paths_fail_at_parsing(flag, make, problem, tmp_path, capsys, no_training):
    path = str(make(tmp_path))
    last = _fails_at_parsing(["--data", "synthetic", "--epochs", "1", flag, path], capsys)
    assert last.startswith(f"python -m hyperfused.train: error: {flag} {path}: ") and last.endswith(problem)


def _without_root_overrides():
    """In the child before exec: drop CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2) from the bounding set,
    so root's process is subject to file permissions after exec."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:            # PR_CAPBSET_DROP
            os._exit(97)


@pytest.mark.parametrize("flag,target", [("--out", "ro"), ("--out", "ro/new/dir"), ("--json", "ro/r.json")])
def test_output_paths_in_a_read_only_directory_fail_at_parsing(flag, target):
    """A directory without write permission. Root may write anywhere (CAP_DAC_OVERRIDE), so as root the
    command runs with that capability dropped from its bounding set: the directory is then really read-only
    to it, and writing into it would fail."""
    import subprocess
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.abspath(train.__file__)))
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        os.mkdir(os.path.join(tmp, "ro"), 0o555)
        os.chmod(os.path.join(tmp, "ro"), 0o555)
        path = os.path.join(tmp, target)
        code = ("import sys; from hyperfused import train\n"
                "def boom(*a, **k): raise AssertionError('went on to load data')\n"
                "train.datasets.load = boom\n"
                f"train.main(['--data', 'synthetic', '--epochs', '1', {flag!r}, {path!r}])\n")
        env = dict(os.environ, PYTHONPATH=root, HOME=tmp, MPLCONFIGDIR=tmp)
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                             preexec_fn=_without_root_overrides if os.geteuid() == 0 else None, timeout=300)
    if out.returncode == 97:
        pytest.skip("running as root without CAP_SETPCAP: cannot drop the capability that lets root write anywhere")
    assert out.returncode == 2, out.stderr[-2000:]
    where = os.path.join(tmp, "ro")
    expected = ("the directory is not writable" if target == "ro" else
                f"the {'directory' if flag == '--out' else 'file'} cannot be created because the directory "
                f"{where} is not writable")
    assert out.stderr.strip().splitlines()[-1] == f"python -m hyperfused.train: error: {flag} {path}: {expected}"


def test_out_without_matplotlib_fails_at_parsing_naming_the_extra(tmp_path, monkeypatch, capsys, no_training):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib raises ImportError
    last = _fails_at_parsing(["--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert last.endswith("--out writes its plots with matplotlib, which is not installed: "
                         "pip install 'hyperfused[train]'")
    assert not (tmp_path / "run").exists()


def test_json_creates_its_folder(tmp_path, capsys):
    path = tmp_path / "a" / "b" / "r.json"
    train.main(["--data", "synthetic", "--epochs", "1", "--no-progress", "--opt", "sgd(0.05)", "--json", str(path)])
    import json
    assert json.loads(path.read_text())["results"][0]["spec"] == "sgd(0.05)"


@pytest.mark.parametrize("opt,carets", [("adam[](1e-3)/sgd", "    ^^"), ("sgd[momentum](0.1)/sgd", "   ^^^^^^^^^^"),
                                        ("adam(1e-3)/adam[lr](1e-3)[lr]", "                         ^^^^")])
def test_malformed_specs_on_the_command_line_fail_at_parsing(opt, carets, capsys, no_training):
    with pytest.raises(SystemExit) as info:
        train.main(["--data", "synthetic", "--epochs", "1", "--opt", "sgd(0.1)", "--opt", opt])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"python -m hyperfused.train: error: bad optimizer spec {opt!r}: " in err
    assert err.rstrip().splitlines()[-2:] == [f"  {opt}", f"  {carets}"]


def test_backend_cuda_without_a_cuda_device_fails_at_parsing(capsys, no_training):
    last = _fails_at_parsing(["--data", "synthetic", "--epochs", "1", "--device", "cpu", "--backend", "cuda"], capsys)
    where = "--device is cpu" if torch.cuda.is_available() else "this machine has no CUDA device"
    assert last.endswith(f"error: --backend cuda runs on CUDA tensors and {where}; use --backend auto")


def test_backend_triton_on_the_cpu_without_the_interpreter_fails_at_parsing(monkeypatch, capsys, no_training):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(train.hf.ops, "triton_available", lambda: True)
    last = _fails_at_parsing(["--data", "synthetic", "--epochs", "1", "--device", "cpu", "--backend", "triton"],
                             capsys)
    assert "error: --backend triton runs on CUDA tensors and " in last
    assert last.endswith("on the CPU it runs under the Triton interpreter, which needs TRITON_INTERPRET=1 in the "
                         "environment")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert train.backend_problem("triton", "cpu") is None


def test_backend_triton_without_triton_fails_at_parsing(monkeypatch, capsys, no_training):
    monkeypatch.setattr(train.hf.ops, "triton_available", lambda: False)
    last = _fails_at_parsing(["--data", "synthetic", "--epochs", "1", "--backend", "triton"], capsys)
    assert last.endswith("error: --backend triton needs the triton package, which does not import here: "
                         "pip install 'hyperfused[triton]'")


def test_unknown_device_fails_at_parsing(capsys, no_training):
    last = _fails_at_parsing(["--data", "synthetic", "--device", "gpu0"], capsys)
    assert last.endswith("error: --device gpu0: not a device name torch knows (e.g. cpu, cuda, cuda:1)")


def _console_script_entry_point():
    """The function pyproject.toml's [project.scripts] names for hyperfused-train."""
    import importlib
    import tomllib
    root = os.path.dirname(os.path.dirname(os.path.abspath(train.__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        target = tomllib.load(f)["project"]["scripts"]["hyperfused-train"]
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


TINY = ["--data", "synthetic", "--epochs", "1", "--no-progress", "--opt", "sgd(0.05)"]


def test_console_script_exits_0_after_a_successful_run(monkeypatch, capsys):
    """The installed script does sys.exit(entry_point()) with sys.argv: a successful run exits 0 and writes no
    Python repr to stderr (it exited 1 and printed the results list)."""
    entry = _console_script_entry_point()
    monkeypatch.setattr(sys, "argv", ["hyperfused-train"] + TINY)
    with pytest.raises(SystemExit) as info:
        sys.exit(entry())
    assert info.value.code == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "sgd(0.05)" in captured.out
    status = entry(TINY)
    assert type(status) is int and status == 0


def test_console_script_exits_2_on_a_bad_argument(monkeypatch, capsys):
    entry = _console_script_entry_point()
    monkeypatch.setattr(sys, "argv", ["hyperfused-train", "--opt", "adam[](1e-3)/sgd"])
    with pytest.raises(SystemExit) as info:
        sys.exit(entry())
    assert info.value.code == 2 and "bad optimizer spec" in capsys.readouterr().err


def test_run_returns_the_results():
    res = train.run(TINY)
    assert [r.spec for r in res] == ["sgd(0.05)"] and len(res[0].epochs) == 1


@pytest.mark.parametrize("how", ["python -m", "installed script"])
def test_the_command_in_a_subprocess_exits_0_with_a_clean_stderr(how, tmp_path):
    """python -m hyperfused.train, and the hyperfused-train script pip installed next to this Python (this
    checkout's package comes first on PYTHONPATH)."""
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(train.__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if how == "python -m":
        cmd = [sys.executable, "-m", "hyperfused.train"]
    else:
        script = os.path.join(os.path.dirname(sys.executable), "hyperfused-train")
        if not os.path.exists(script):
            pytest.skip("no hyperfused-train script next to this Python (the package is not pip-installed)")
        cmd = [script]
    out = subprocess.run(cmd + TINY + ["--json", str(tmp_path / "r.json")], cwd=str(tmp_path), env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Result(" not in out.stderr and "Traceback" not in out.stderr
    assert "sgd(0.05)" in out.stdout and (tmp_path / "r.json").stat().st_size > 0


# --conventions: the keywords reach the constructors. The classes are replaced by recording subclasses that pass
# on only the keywords the real class accepts, so these tests do not depend on hf.Adam having
# initial_exp_avg_sq yet.
@pytest.fixture
def constructor_calls(monkeypatch):
    import inspect
    calls = []
    for kind, cls in list(train.KINDS.items()):
        accepted = set(inspect.signature(cls).parameters)

        def init(self, *args, _cls=cls, _kind=kind, _accepted=accepted, **kw):
            calls.append((_kind, dict(kw)))
            _cls.__init__(self, *args, **{k: v for k, v in kw.items() if k in _accepted})

        monkeypatch.setitem(train.KINDS, kind, type(f"Recording{cls.__name__}", (cls,), {"__init__": init}))
    return calls


PAPER_KW = {"adam": {"initial_exp_avg_sq": 1e-8},
            "adagrad": {"initial_accumulator_value": 0.1, "eps_inside_sqrt": True},
            "rmsprop": {"eps_inside_sqrt": True}}
_PAPER_NAMES = {"initial_exp_avg_sq", "initial_accumulator_value", "eps_inside_sqrt"}


def _check_paper_kwargs(calls, paper):
    for kind, kw in calls:
        want = PAPER_KW.get(kind, {})
        for name, value in want.items():
            assert (kw.get(name) == value) if paper else (name not in kw), (kind, kw)
        assert not (_PAPER_NAMES - set(want)) & set(kw), (kind, kw)


def test_build_optimizer_passes_the_paper_conventions_to_every_level(constructor_calls):
    spec = train.parse_spec("adam(1e-3)/adagrad(0.01)/rmsprop(1e-4)/adam(1e-5)/sgd(1e-6)")
    constructor_calls.clear()
    opt = train.build_optimizer(spec, [torch.zeros(3, requires_grad=True)], conventions="paper")
    assert opt.height == 4
    # built top-down: sgd, adam, rmsprop, adagrad, then level 0
    assert [k for k, _ in constructor_calls] == ["sgd", "adam", "rmsprop", "adagrad", "adam"]
    assert [constructor_calls[i][1]["initial_exp_avg_sq"] for i in (1, 4)] == [1e-8, 1e-8]
    assert constructor_calls[3][1]["initial_accumulator_value"] == 0.1
    _check_paper_kwargs(constructor_calls, paper=True)
    constructor_calls.clear()
    train.build_optimizer(spec, [torch.zeros(3, requires_grad=True)])            # torch conventions: nothing added
    assert len(constructor_calls) == 5
    _check_paper_kwargs(constructor_calls, paper=False)


@pytest.mark.parametrize("conventions", ["paper", "torch"])
def test_conventions_option_reaches_every_tower_built(conventions, constructor_calls, capsys):
    train.run(["--data", "synthetic", "--epochs", "1", "--no-progress", "--conventions", conventions,
               "--opt", "adagrad(0.01)/adam(1e-4)", "--opt", "torch.adam(1e-3)"])
    # the check at parsing, the warm-up and the run: three builds of the two levels
    assert [k for k, _ in constructor_calls] == ["adam", "adagrad"] * 3
    _check_paper_kwargs(constructor_calls, paper=conventions == "paper")
    assert ("the paper's conventions" in capsys.readouterr().out) == (conventions == "paper")


def test_paper_conventions_without_the_keyword_fail_at_parsing(monkeypatch, capsys, no_training):
    class AdamWithoutIt(train.hf.Adam):          # hf.Adam as it was before initial_exp_avg_sq
        def __init__(self, params=None, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, *, hyper=None, learn=None,
                     per_tensor=False, backend="auto", one_pass=False):
            super().__init__(params, lr, betas, eps, hyper=hyper, learn=learn, per_tensor=per_tensor,
                             backend=backend, one_pass=one_pass)

    monkeypatch.setitem(train.KINDS, "adam", AdamWithoutIt)
    last = _fails_at_parsing(["--conventions", "paper", "--opt", "sgd(0.1)/adam(1e-3)"], capsys)
    assert last.endswith("error: --conventions paper needs the keyword initial_exp_avg_sq of hf.AdamWithoutIt, "
                         "which this version of hyperfused does not have")


def test_paper_experiments_build_every_tower_with_the_paper_conventions(constructor_calls):
    """bench/paper_experiments.py reproduces the paper's Table 1: its runs use the paper's conventions."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(train.__file__)))
    sys.path.insert(0, os.path.join(root, "bench"))
    try:
        import paper_experiments
    finally:
        sys.path.remove(os.path.join(root, "bench"))
    data = train.datasets.load("synthetic", 0)
    specs = ["adam(1e-3)/sgd(1e-5)", "adagrad(0.01)/adam(1e-4)", "torch.adam(1e-3)"]
    res = paper_experiments._run(data, specs, 1, 256)
    assert len(res) == 3 and [k for k, _ in constructor_calls].count("adam") == 2 * 2    # parse check + the run
    assert [k for k, _ in constructor_calls].count("adagrad") == 2
    _check_paper_kwargs(constructor_calls, paper=True)


def test_adamw_lion_and_torch_adamw_train():
    """The training command knows hf.AdamW and hf.Lion (towers too) and torch's AdamW as a baseline."""
    res = train.run(["--data", "synthetic", "--epochs", "1", "--no-progress", "--opt", "adamw(1e-3)/sgd(1e-5)",
                     "--opt", "lion(1e-4)/sgd(1e-7)", "--opt", "torch.adamw(1e-3)"])
    assert [r.spec for r in res] == ["adamw(1e-3)/sgd(1e-5)", "lion(1e-4)/sgd(1e-7)", "torch.adamw(1e-3)"]
    for r in res:
        assert all(math.isfinite(e["train_loss"]) for e in r.epochs), r.spec
