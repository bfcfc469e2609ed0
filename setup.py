"""Build of hyperfused: the Python package plus the C++ extension ``hyperfused._C`` (torch ops, CPU kernels).

Environment:
    HYPERFUSED_BUILD_EXT=0   skip the C++ extensions (the pure-PyTorch reference backend still works).
    HYPERFUSED_CUDA=1 / 0    force / skip the CUDA extension ``hyperfused._C_cuda``; by default it is built when
                             torch is a CUDA build and a CUDA toolkit is found (set CUDA_HOME=/usr/local/cuda).
    TORCH_CUDA_ARCH_LIST     GPU architectures (default "8.0;9.0": A100 and H100).
Build with torch already installed: ``pip install --no-build-isolation -e .``
"""
import glob
import os

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}
# Link libstdc++ as the shared library torch itself uses, also where the compiler driver links it statically by
# default (seen on a GPU image whose g++ wrapper did): a private static copy inside the extension has its own
# locale, never set up, so every number written into an error message (TORCH_CHECK) came out missing or crashed
# the process. An explicit -lstdc++ asks for the shared library; since the driver's own flags may still win, the
# kernels' error messages are also formatted without iostreams (csrc/hyperfused/check.h), which a static copy
# cannot break.
SHARED_LIBSTDCXX = ["-lstdc++"]
if os.environ.get("HYPERFUSED_BUILD_EXT", "1") != "0":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpu = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc/cpu/*.cpp")))
    # ISA-specific loop files last: the linker keeps the first copy of an inline function, the default-ISA one
    isa_last = [s for s in cpu if s.endswith(("_avx2.cpp", "_avx512.cpp"))]
    sources = ["csrc/ops.cpp", "csrc/autograd.cpp"] + [s for s in cpu if s not in isa_last] + isa_last
    ext_modules.append(
        CppExtension(
            name="hyperfused._C",
            sources=sources,
            include_dirs=[os.path.join(here, "csrc")],
            # -ffp-contract=off: every ISA build of the loops rounds alike (no fused multiply-add);
            # -fno-math-errno: sqrt without the errno branch, so loops with sqrt vectorise
            # -fopenmp: at::parallel_for is inline OpenMP code in torch's headers (serial without it);
            # the extension then shares the libgomp.so.1 that torch has already loaded
            extra_compile_args={"cxx": ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]},
            extra_link_args=["-fopenmp"] + SHARED_LIBSTDCXX,
        )
    )

    class BuildExt(BuildExtension.with_options(use_ninja=True)):
        """Also records, next to the extensions, the torch they were built against and the digest of the kernels'
        sources (hyperfused/_build_info.json): the package refuses, with a message that says so, to load them under
        another torch or from a checkout whose csrc/ changed since."""

        def run(self):
            super().run()
            import json

            import importlib.util

            import torch as _torch
            # the digest of csrc/ the package checks at load time (hyperfused/ops/_ext.py, loaded by its path:
            # the package itself needs the extension being built)
            spec = importlib.util.spec_from_file_location(
                "_hf_ext", os.path.join(os.path.dirname(os.path.abspath(__file__)), "hyperfused", "ops", "_ext.py"))
            ext_mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(ext_mod)
            sources = ext_mod.sources_digest(os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc"))
            dirs = {os.path.dirname(self.get_ext_fullpath(ext.name)) for ext in self.extensions}
            for d in dirs:
                with open(os.path.join(d, "_build_info.json"), "w") as f:
                    json.dump({"torch": _torch.__version__, "cuda": _torch.version.cuda, "sources": sources}, f)

    cmdclass["build_ext"] = BuildExt

    import torch
    from torch.utils import cpp_extension

    want = os.environ.get("HYPERFUSED_CUDA", "auto")
    have = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if want == "1" and not have:
        raise RuntimeError("HYPERFUSED_CUDA=1 but torch is not a CUDA build or no CUDA toolkit was found "
                           f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME}); "
                           "install a CUDA build of torch and set CUDA_HOME")
    if want == "1" or (want == "auto" and have):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        # headers of the CUDA libraries torch ships (cusparse.h and friends) live in its nvidia/cu* folders
        extra_inc = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include")))
        ext_modules.append(
            cpp_extension.CUDAExtension(
                name="hyperfused._C_cuda",
                sources=["csrc/cuda/ops_cuda.cpp", "csrc/cuda/hyper_kernels.cu", "csrc/cuda/agd_kernels.cu",
                         "csrc/cuda/tower_kernels.cu"],
                include_dirs=[os.path.join(here, "csrc")] + extra_inc,
                extra_compile_args={"cxx": ["-O3"],
                                    "nvcc": ["-O3", "-lineinfo", "-Xptxas=-v"]},
                extra_link_args=SHARED_LIBSTDCXX,
            )
        )

setup(
    packages=find_packages(include=["hyperfused", "hyperfused.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
