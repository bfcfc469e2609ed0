"""pytest-benchmark microbenchmarks of hyperfused's ops and optimizer steps, each next to torch's counterpart.

    pytest bench/micro --benchmark-only                            # default size (~1-2 minutes on 2 CPU cores)
    pytest bench/micro --benchmark-only --micro-size large         # or HF_MICRO_SIZE=large; or an element count: 4M
    pytest bench/micro --benchmark-disable --micro-size tiny       # every body once (tests/test_micro_bench_smoke.py)

Sizes: tiny (4096 elements), default (2^20 on CPU, 2^26 on a GPU), large (2^24 / 2^28), or an element count.
On the default size, unless --benchmark-max-time is given, every benchmark runs for 0.5 s (at least 5 rounds).
Device: cuda when there is a GPU, else cpu; backends: those that run there (hf_micro.backends(); HF_MICRO_BACKENDS
picks others). On CUDA the timed function ends with torch.cuda.synchronize(). On CPU the run takes one thread
(torch.set_num_threads(1)): per-core numbers, which a machine shared with other work does not scramble;
--micro-threads N (HF_MICRO_THREADS=N) takes N, 0 torch's default.

Every benchmark's extra_info holds the bytes it moves per call (the bytes model, docs/MATH.md §6), its effective
GB/s from the measured mean, and for hyperfused's entries the ratio of its mean to its torch baseline's
(``vs_torch``); the groups (one per op or optimizer family and dtype) put each entry next to its baseline, and a
summary of those ratios is printed in the run's terminal summary.
"""
from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hf_micro  # noqa: E402

_RESULTS: dict = {}          # (group, entry) -> {"mean": seconds, "gbps": ..., "vs_torch": ...}
_DEFAULT_MAX_TIME = 0.5


def pytest_addoption(parser):
    parser.addoption("--micro-size", default=None,
                     help="microbenchmark size: tiny, default, large or an element count like 4M "
                          "(env HF_MICRO_SIZE; default: default)")
    parser.addoption("--micro-threads", type=int, default=None,
                     help="torch.set_num_threads for the run, 0: torch's default (env HF_MICRO_THREADS; "
                          "default: 1 on CPU, torch's default with a GPU)")


def _size_text(config) -> str:
    return config.getoption("--micro-size") or os.environ.get("HF_MICRO_SIZE") or "default"


def pytest_configure(config):
    hf_micro.parse_size(_size_text(config))          # a bad size fails here, before anything runs
    threads = config.getoption("--micro-threads")
    if threads is None:
        threads = int(os.environ.get("HF_MICRO_THREADS", "1" if hf_micro.DEVICE == "cpu" else "0"))
    if threads > 0:
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """The default size runs each benchmark for _DEFAULT_MAX_TIME seconds unless --benchmark-max-time says."""
    if _size_text(config) != "default":
        return
    if any(str(a).startswith("--benchmark-max-time") for a in config.invocation_params.args):
        return
    for item in items:
        if "measure" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.benchmark(max_time=_DEFAULT_MAX_TIME))


@pytest.fixture(scope="session")
def size(pytestconfig) -> hf_micro.Size:
    return hf_micro.parse_size(_size_text(pytestconfig))


@pytest.fixture
def measure(benchmark, size):
    """measure(bench, entry, dtype, backend): times ``bench.fn`` in ``benchmark`` (group ``bench.group`` and the
    dtype), puts bytes, GB/s and the ratio to the group's torch baseline in extra_info."""

    def run(bench: hf_micro.Bench, entry: str, dtype: str, backend: str):
        group = f"{bench.group} [{dtype}]"
        benchmark.group = group
        fn = bench.fn
        if hf_micro.DEVICE == "cuda":
            def timed():
                out = fn()
                torch.cuda.synchronize()
                return out
            torch.cuda.synchronize()
        else:
            timed = fn
        info = benchmark.extra_info
        info.update(entry=entry, device=hf_micro.DEVICE, dtype=dtype, backend=backend, size=size.name,
                    elements=size.elements, threads=torch.get_num_threads(), bytes=bench.nbytes,
                    baseline=bench.baseline)
        benchmark(timed)
        if benchmark.disabled or benchmark.stats is None:
            return
        mean = benchmark.stats.stats.mean
        info["gbps"] = hf_micro.gbps(bench.nbytes, mean)
        base = _RESULTS.get((group, bench.baseline)) if bench.baseline else None
        if base is not None:
            info["vs_torch"] = mean / base["mean"]
        _RESULTS[(group, entry)] = dict(mean=mean, gbps=info["gbps"], vs_torch=info.get("vs_torch"),
                                        baseline=bench.baseline)

    return run


def pytest_terminal_summary(terminalreporter):
    if not _RESULTS:
        return
    tr = terminalreporter
    tr.write_sep("-", f"hyperfused / torch ({hf_micro.DEVICE}, {torch.get_num_threads()} threads; mean per call; "
                      f"GB/s from the bytes model)")
    tr.write_line(f"{'group':<48} {'entry':<52} {'mean':>10} {'GB/s':>8} {'ours/torch':>10}")
    for (group, entry), r in sorted(_RESULTS.items(), key=lambda kv: (kv[0][0], kv[1]["baseline"] is not None)):
        mean = r["mean"]
        t = f"{mean * 1e3:.3f} ms" if mean >= 1e-3 else f"{mean * 1e6:.1f} us"
        bw = f"{r['gbps']:.2f}" if r["gbps"] is not None else ""
        ratio = f"{r['vs_torch']:.2f}x" if r["vs_torch"] is not None else ""
        tr.write_line(f"{group:<48} {entry:<52} {t:>10} {bw:>8} {ratio:>10}")
