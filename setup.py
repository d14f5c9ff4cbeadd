"""The kernel sources (csrc/, at the top of the repository as the design lays out) ship inside the package as
v4cli/csrc, so an install that is not editable can still build them (runtime/kernel_build.source_root)."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


class BuildWithKernelSources(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "v4cli" / "csrc"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(HERE / "csrc", dest, ignore=shutil.ignore_patterns("*.o", "*.so", "__pycache__"))


setup(cmdclass={"build_py": BuildWithKernelSources})
