"""The op layer: backend resolution and the first C++ op against its pure-PyTorch reference."""
import os

import pytest
import torch

from hyperfused import ops
from hyperfused.ops import reference


def test_the_extension_is_built_and_registers_its_ops():
    # .ci/run builds the extension; a missing build must fail here rather than silently fall back
    assert ops.extension_available(), f"hyperfused._C did not load: {ops._ext.extension_error()!r}"
    assert hasattr(torch.ops.hyperfused, "multi_tensor_dot")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-12),
                                       (torch.bfloat16, 1e-12), (torch.float16, 1e-12)])
def test_multi_tensor_dot_matches_reference(dtype, tol):
    torch.manual_seed(0)
    sizes = [1, 7, 4097, 278011, 0]
    a = [torch.randn(n).to(dtype) for n in sizes]
    b = [torch.randn(n).to(dtype) for n in sizes]
    got = ops.multi_tensor_dot(a, b)
    exp = reference.multi_tensor_dot(a, b)
    assert got.dtype == torch.float64 and got.shape == (len(sizes),)
    torch.testing.assert_close(got, exp, rtol=tol, atol=tol)


def test_multi_tensor_dot_is_deterministic_across_thread_counts():
    torch.manual_seed(1)
    a = [torch.randn(1_000_003), torch.randn(33)]
    b = [torch.randn(1_000_003), torch.randn(33)]
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.multi_tensor_dot(a, b)
        torch.set_num_threads(2)
        two = ops.multi_tensor_dot(a, b)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)


def test_multi_tensor_dot_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="pair 0 has shapes"):
        ops.multi_tensor_dot([torch.zeros(3)], [torch.zeros(4)])
    with pytest.raises(ValueError, match="got 1 tensors in a and 2 in b"):
        ops.multi_tensor_dot([torch.zeros(3)], [torch.zeros(3), torch.zeros(3)])


def test_resolve_backend():
    assert ops.resolve_backend("auto") == "auto"        # decided per param group, by device
    assert ops.resolve_backend("cpu") == "cpu"
    with pytest.raises(ValueError, match="unknown backend"):
        ops.resolve_backend("tpu")


CHUNK, MAX_BLOCKS, MAX_TENSORS = 65536, 320, 24      # csrc/cuda/hyper_cuda.h


@pytest.mark.parametrize("numels", [
    [CHUNK * 820 + 5],                                   # one tensor over three tables (a 2^28-element step)
    [3, CHUNK * 700 + 1, 0, 7, CHUNK * 320, CHUNK * 2],  # tensors ending exactly where a table fills
    [(i * 37) % 3001 + 1 for i in range(230)],           # many small tensors: tables bounded by tensor count
    [CHUNK * 319, CHUNK + 1, CHUNK * 641],
])
def test_cuda_tables_give_every_chunk_of_every_tensor_to_one_block(numels):
    """The host walk that fills the CUDA kernels' tensor tables (csrc/cuda/tables.h), run on CPU with stand-in
    pointers: every (tensor, chunk) gets exactly one block, whose table slot points at that tensor, and the
    blocks' workspace rows are 0..total-1 in order. (A tensor continuing in a third table once got a null
    pointer: an illegal memory access on an H200 at 2^28 elements.)"""
    if not ops.extension_available():
        pytest.skip("the C++ extension is not built")
    plan = torch.ops.hyperfused._cuda_table_plan(numels)
    launch, row, tensor_ptr, tensor_idx, chunk, numel = plan.T.tolist()
    want = [(t, c) for t, n in enumerate(numels) for c in range((n + CHUNK - 1) // CHUNK)]
    assert list(zip(tensor_idx, chunk)) == want
    assert tensor_ptr == tensor_idx                        # the slot's pointers are that tensor's
    assert numel == [numels[t] for t in tensor_idx]
    assert row == list(range(len(want)))
    per_launch = torch.bincount(plan[:, 0])
    assert int(per_launch.max()) <= MAX_BLOCKS and int(per_launch.min()) > 0
    for lo in range(int(plan[:, 0].max()) + 1):            # each launch's tensors fit a table
        assert len(set(t for la, t in zip(launch, tensor_idx) if la == lo)) <= MAX_TENSORS


def test_refusals_of_the_compiled_ops_print_their_numbers():
    """The C++ ops' error messages carry the sizes and indices they name: with a statically linked private copy
    of libstdc++ (a compiler driver's default on one GPU image), numbers came out empty or crashed the process."""
    if not ops.extension_available():
        pytest.skip("the C++ extension is not built")
    xs = [torch.randn(3, 5, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)]
    with pytest.raises(RuntimeError, match=r"destination 1 must be a contiguous float64 CPU tensor of 8 elements"):
        torch.ops.hyperfused.agd_normalize_rows(xs, [torch.zeros(3, 5, dtype=torch.float64),
                                                     torch.zeros(3, dtype=torch.float64)])
    with pytest.raises(RuntimeError, match=r"agd_update: 2 params for 1 grads"):
        torch.ops.hyperfused.agd_update(xs, xs[:1], torch.zeros(2, dtype=torch.float64))


def test_extensions_built_for_another_torch_are_refused_with_a_message(tmp_path):
    """The build records its torch (hyperfused/_build_info.json); under another torch the package says to rebuild
    instead of loading the extension (an unreadable symbol error at best)."""
    import json
    from hyperfused.ops import _ext
    info = tmp_path / "_build_info.json"
    info.write_text(json.dumps({"torch": "0.0.1+other", "cuda": None}))
    msg = _ext.build_mismatch(str(info))
    assert "built against torch 0.0.1+other" in msg and torch.__version__ in msg and "rebuild" in msg
    info.write_text(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda}))
    assert _ext.build_mismatch(str(info)) is None
    assert _ext.build_mismatch(str(tmp_path / "absent.json")) is None
    if ops.extension_available() and os.path.exists(_ext.BUILD_INFO):      # this tree's own build matches
        assert _ext.build_mismatch() is None
