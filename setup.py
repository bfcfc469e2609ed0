"""Build of hyperfused: the Python package plus the C++ extension ``hyperfused._C`` (torch ops, CPU kernels).

Environment:
    HYPERFUSED_BUILD_EXT=0   skip the C++ extension (the pure-PyTorch reference backend still works).
Build with torch already installed: ``pip install --no-build-isolation -e .``
"""
import glob
import os

from setuptools import find_packages, setup

ext_modules = []
cmdclass = {}
if os.environ.get("HYPERFUSED_BUILD_EXT", "1") != "0":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    here = os.path.dirname(os.path.abspath(__file__))
    cpu = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc/cpu/*.cpp")))
    # ISA-specific loop files last: the linker keeps the first copy of an inline function, the default-ISA one
    isa_last = [s for s in cpu if s.endswith(("_avx2.cpp", "_avx512.cpp"))]
    sources = ["csrc/ops.cpp"] + [s for s in cpu if s not in isa_last] + isa_last
    ext_modules.append(
        CppExtension(
            name="hyperfused._C",
            sources=sources,
            include_dirs=[os.path.join(here, "csrc")],
            # -ffp-contract=off: every ISA build of the loops rounds alike (no fused multiply-add);
            # -fno-math-errno: sqrt without the errno branch, so loops with sqrt vectorise
            # -fopenmp: at::parallel_for is inline OpenMP code in torch's headers (serial without it);
            # the extension then shares the libgomp.so.1 that torch has already loaded
            extra_compile_args={"cxx": ["-O3", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fopenmp"]},
            extra_link_args=["-fopenmp"],
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(
    packages=find_packages(include=["hyperfused", "hyperfused.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
