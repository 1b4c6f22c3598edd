"""Build the optional C++ extension (block-sparse int8 kernels); everything else is in pyproject.toml.

The extension is optional: without a C++ compiler (or torch at build time) the package still
installs, and the sparse engine falls back to dense int8 with one warning.
"""

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # no torch in the build environment: pure-Python install
    ext_modules, cmdclass = [], {}
else:
    ext_modules = [CppExtension(
        "distilprune.engine._sparse_int8",
        ["src/distilprune/engine/csrc/sparse_int8.cpp",
         "src/distilprune/engine/csrc/attention_int8.cpp"],
        # -fopenmp: at::parallel_for is a header template; without it the loops run serially.
        extra_compile_args=["-O3", "-ffp-contract=off", "-std=c++17", "-fopenmp"],
        extra_link_args=["-fopenmp"],
        optional=True,
    )]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=False)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
