"""Builds the optional proof-of-work C extension.

Everything else lives in pyproject.toml. The extension is optional: when no C
compiler is available the build still succeeds and ds2a falls back to the
pure-Python hash (correct, about 700 times slower, and loud about it).
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers
            print(f"WARNING: ds2a proof-of-work extension not built ({exc}); using pure Python")

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "msvc":  # GCC-style flags would only draw warnings
            ext.extra_compile_args = ["/O2"]
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"WARNING: could not build {ext.name} ({exc}); using pure Python")


setup(
    ext_modules=[
        Extension(
            "ds2a.deepseek._pow",
            sources=["ds2a/deepseek/_pow.c"],
            # No -march=native: the image is built on one machine and run on another.
            # _pow.c compiles its AVX2/AVX-512 kernels with per-function target
            # attributes and picks one at import from what the running CPU supports.
            extra_compile_args=["-O3", "-Wextra"],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
