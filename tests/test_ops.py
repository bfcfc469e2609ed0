"""The op layer: backend resolution and the first C++ op against its pure-PyTorch reference."""
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
