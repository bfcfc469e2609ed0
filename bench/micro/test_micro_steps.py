"""Optimizer steps: torch's (fused where the device has it, else foreach) Adam, AdamW, SGD with momentum and plain
SGD, and hyperfused's Adam, SGD and AGD configurations on every backend of the device, grouped by family and
dtype (hf_micro.TORCH_STEPS, hf_micro.HF_STEPS)."""
import pytest

import hf_micro

CASES = [(dt, step, backend) for dt in hf_micro.DTYPES for step, backend in hf_micro.step_ids()]


@pytest.mark.parametrize("dtype,step,backend", CASES,
                         ids=[f"{dt}-{step}-{backend or 'torch'}" for dt, step, backend in CASES])
def test_step(measure, size, dtype, step, backend):
    cfg = hf_micro.TORCH_STEPS[step] if backend is None else hf_micro.HF_STEPS[step]
    bench = hf_micro.step_bench(cfg, backend, hf_micro.DTYPES[dtype], size)
    entry = step if backend is None else f"{step} [{backend}]"
    measure(bench, entry, dtype, backend or "torch")
