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
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"WARNING: could not build {ext.name} ({exc}); using pure Python")


setup(
    ext_modules=[
        Extension(
            "ds2a.deepseek._pow",
            sources=["ds2a/deepseek/_pow.c"],
            extra_compile_args=["-O3"],
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
