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
    sources = ["csrc/ops.cpp"] + sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc/cpu/*.cpp")))
    ext_modules.append(
        CppExtension(
            name="hyperfused._C",
            sources=sources,
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args={"cxx": ["-O3", "-std=c++17"]},
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(
    packages=find_packages(include=["hyperfused", "hyperfused.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
