"""Every op on its own, replaying the calls a real optimizer step made (hf_micro.OPS), next to torch's
counterpart on tensors of the same sizes and dtypes."""
import pytest

import hf_micro

CASES = [(dt, op, entry) for dt in hf_micro.DTYPES for op, entry in hf_micro.op_ids()]


@pytest.mark.parametrize("dtype,op,entry", CASES, ids=[f"{dt}-{op}-{entry}" for dt, op, entry in CASES])
def test_op(measure, size, dtype, op, entry):
    case = hf_micro.OPS[op]
    if entry == "torch":
        bench = hf_micro.torch_op_bench(case, hf_micro.DTYPES[dtype], size)
        name = f"torch {op}"
    else:
        bench = hf_micro.op_bench(case, entry, hf_micro.DTYPES[dtype], size)
        name = f"hf {op} [{entry}]"
    measure(bench, name, dtype, entry)
