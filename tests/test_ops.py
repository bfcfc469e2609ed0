"""The op layer: backend resolution and the first C++ op against its pure-PyTorch reference."""
import os

import pytest
import torch

from hyperfused import ops
from hyperfused.kinds import TABLE_COLS
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


CHUNK = 65536      # csrc/cuda/hyper_cuda.h


@pytest.mark.parametrize("numels", [
    [CHUNK * 820 + 5],                                   # one tensor of 821 blocks (a 2^28-element step)
    [3, CHUNK * 700 + 1, 0, 7, CHUNK * 320, CHUNK * 2],  # empty tensors, tensors ending on a chunk's end
    [(i * 37) % 3001 + 1 for i in range(230)],           # many small tensors
    [CHUNK * 319, CHUNK + 1, CHUNK * 641],
])
def test_cuda_table_gives_every_chunk_of_every_tensor_to_one_block_of_one_launch(numels):
    """The flat table the CUDA kernels read from device memory (csrc/cuda/tables.h), built on CPU with stand-in
    pointers and read back as the kernels read it: every (tensor, chunk) gets exactly one block, in tensor order, all
    in one launch; the block's pointers are that tensor's in every list, and its workspace rows are 0..total-1 in
    order (the finish's binary search needs each tensor's rows contiguous). (The by-value tables it replaced once
    gave a tensor continuing in a third table a null pointer: an illegal memory access on an H200.)"""
    if not ops.extension_available():
        pytest.skip("the C++ extension is not built")
    plan = torch.ops.hyperfused._cuda_table_plan(numels)
    launch, row, tensor_ptr, tensor_idx, chunk, numel = plan.T.tolist()
    want = [(t, c) for t, n in enumerate(numels) for c in range((n + CHUNK - 1) // CHUNK)]
    assert list(zip(tensor_idx, chunk)) == want
    assert tensor_ptr == tensor_idx                        # the block's pointers are its tensor's
    assert numel == [numels[t] for t in tensor_idx]
    assert row == list(range(len(want)))
    assert set(launch) == {0}


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


# backend="auto" and its fallback warning (ops.auto_backend)
import types  # noqa: E402
import warnings  # noqa: E402


@pytest.fixture
def availability(monkeypatch):
    """A function set_(cpu=, cuda=, triton=) that makes the kernels look built or missing (the names that
    backend='auto' consults, in the ops module); the record of fallback warnings already given starts empty."""
    monkeypatch.setattr(ops, "_FALLBACK_WARNED", set())

    def set_(cpu=True, cuda=True, triton=True):
        monkeypatch.setattr(ops, "extension_available", lambda: cpu)
        monkeypatch.setattr(ops, "cuda_extension_available", lambda: cuda)
        monkeypatch.setattr(ops, "triton_available", lambda: triton)
    return set_


def _fallback_warnings(call):
    """call()'s result and the BackendFallbackWarnings it gave, every one shown (Python's once-per-location
    registry must not be what keeps a second one away)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [w for w in caught if issubclass(w.category, ops.BackendFallbackWarning)]


def test_auto_backend_warns_once_when_the_cpu_extension_is_missing(availability):
    availability(cpu=False)
    backend, caught = _fallback_warnings(lambda: ops.auto_backend(torch.device("cpu")))
    assert backend == "reference" and len(caught) == 1
    msg = str(caught[0].message)
    assert "backend='auto'" in msg and "reference" in msg and "hyperfused._C" in msg and "CPU" in msg
    assert "pip install --no-build-isolation -e ." in msg
    assert caught[0].filename == __file__               # the caller's line, not one inside hyperfused
    backend, caught = _fallback_warnings(lambda: ops.auto_backend("cpu"))
    assert backend == "reference" and caught == []              # once per process and device type
    # the CUDA fallback is another device type: it warns once of its own
    availability(cpu=False, cuda=False, triton=False)
    assert len(_fallback_warnings(lambda: ops.auto_backend("cuda:0"))[1]) == 1


def test_auto_backend_warns_once_when_cuda_has_neither_its_extension_nor_triton(availability):
    availability(cuda=False, triton=False)
    backend, caught = _fallback_warnings(lambda: ops.auto_backend("cuda"))
    assert backend == "reference" and len(caught) == 1
    msg = str(caught[0].message)
    assert "CUDA tensors" in msg and "hyperfused._C_cuda" in msg and "Triton" in msg
    assert "HYPERFUSED_CUDA=1 pip install --no-build-isolation -e ." in msg and "pip install triton" in msg
    assert _fallback_warnings(lambda: ops.auto_backend(torch.device("cuda", 1))) == ("reference", [])
    # the CPU extension is there: CPU tensors run the C++ kernels, without a warning
    assert _fallback_warnings(lambda: ops.auto_backend("cpu")) == ("cpu", [])


@pytest.mark.parametrize("cpu,cuda,triton", [(c, u, t) for c in (True, False) for u in (True, False)
                                             for t in (True, False)])
def test_auto_backend_is_the_optimizers_choice_and_warns_only_on_a_fallback(availability, cpu, cuda, triton):
    """auto_backend(device) picks what the optimizers' backend='auto' runs for a param group on that device
    (hyperfused/optim/base.py, _group_backend), and warns exactly when that is the reference for want of kernels
    (the C++ extension for CPU tensors; the CUDA extension and Triton for CUDA tensors), never for other
    device types, which have no compiled kernels."""
    import hyperfused as hf
    availability(cpu=cpu, cuda=cuda, triton=triton)
    opt = hf.SGD([torch.zeros(2, requires_grad=True)], lr=0.1, backend="auto")
    for device in ("cpu", "cuda", "meta"):
        group = {"params": [types.SimpleNamespace(device=torch.device(device))]}     # only its device is read
        backend, caught = _fallback_warnings(lambda: ops.auto_backend(device))
        with warnings.catch_warnings():           # (once base.py calls auto_backend, the warning is given)
            warnings.simplefilter("ignore")
            assert opt._group_backend(group) == backend, device
        fell_back = {"cpu": not cpu, "cuda": not (cuda or triton), "meta": False}[device]
        assert len(caught) == int(fell_back), (device, [str(w.message) for w in caught])


def test_an_optimizer_says_which_backend_each_group_runs(monkeypatch):
    import hyperfused as hf
    p = [torch.nn.Parameter(torch.zeros(3))]
    want = "cpu" if ops.extension_available() else "reference"
    assert hf.Adam(p).backends() == [want]
    assert hf.Adam(p, backend="reference").backends() == ["reference"]
    monkeypatch.setattr(ops, "extension_available", lambda: False)
    monkeypatch.setattr(ops, "_FALLBACK_WARNED", set())         # as in a fresh process
    with pytest.warns(UserWarning, match="reference"):
        assert hf.SGD(p).backends() == ["reference"]


def test_extensions_built_from_other_kernel_sources_are_refused_with_a_message(tmp_path):
    """The build records a digest of csrc/; a checkout whose kernels changed since (edited, pulled) refuses the old
    extension and says to rebuild, instead of silently running the old kernels."""
    import json
    import shutil
    from hyperfused.ops import _ext
    src = tmp_path / "csrc"
    shutil.copytree(_ext.SOURCES, src)
    info = tmp_path / "_build_info.json"
    info.write_text(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda,
                                "sources": _ext.sources_digest(str(src))}))
    assert _ext.build_mismatch(str(info), str(src)) is None
    header = next(src.rglob("kinds.h"))
    header.write_text(header.read_text() + "\n// edited\n")
    msg = _ext.build_mismatch(str(info), str(src))
    assert "other kernel sources" in msg and "rebuild" in msg
    assert _ext.build_mismatch(str(info), str(tmp_path / "no-csrc")) is None     # an installed package: no check
    if ops.extension_available() and os.path.exists(_ext.BUILD_INFO):      # this tree's own build is current
        assert _ext.build_mismatch() is None


# ------------------------------------------------------------------------------------------------------------
# The C++ ops' error messages are formatted without iostreams (csrc/hyperfused/check.h): an extension linked
# with a private static libstdc++ (a GPU image's compiler driver did so) wrote no number into TORCH_CHECK's
# stream, and crashed there. Built that way here, the old messages stopped at their first number.
CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def test_every_cpp_check_formats_its_message_without_a_stream():
    offenders = []
    for root, _, files in os.walk(CSRC):
        for name in files:
            path = os.path.join(root, name)
            if name == "check.h" or not name.endswith((".cpp", ".cu", ".h", ".cuh")):
                continue
            with open(path) as f:
                text = f.read()
            for token in ("TORCH_CHECK", "ostringstream", "c10::str(", "std::cout", "std::cerr"):
                if token in text:
                    offenders.append(f"{os.path.relpath(path, CSRC)}: {token}")
    assert not offenders, "use HF_CHECK / hyperfused::msg (csrc/hyperfused/check.h): " + ", ".join(offenders)


def test_cpp_error_messages_carry_their_numbers_dtypes_devices_and_shapes():
    if not ops.extension_available():
        pytest.skip("the C++ extension is not built")
    k = torch.ops.hyperfused
    g = [torch.randn(4)]
    scal = torch.zeros(1, TABLE_COLS, dtype=torch.float64)
    with pytest.raises(RuntimeError) as e:
        k.hyper_reduce(0, 1, False, [0.0, 0.0], g, [torch.randn(4)], [], [], scal,
                       inv_scale=torch.ones(2, dtype=torch.float32))
    assert "got Float of 2 elements on cpu" in str(e.value)
    with pytest.raises(RuntimeError) as e:
        k.agd_normalize_rows([torch.randn(3, 5, dtype=torch.float64), torch.randn(7, 2)],
                             [torch.zeros(15, dtype=torch.float64), torch.zeros(14)])
    assert "tensor 1 must be a contiguous float64 CPU matrix (rows, d), got Float of shape [7, 2]" in str(e.value)
    with pytest.raises(RuntimeError) as e:
        k.agd_normalize_rows([torch.randn(3, 5, dtype=torch.float64)], [])
    assert "1 tensors but 0 destinations" in str(e.value)
