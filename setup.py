"""Builds fusedopt's platform wheel: CMake compiles _fusedopt_ops.so.

Environment knobs (all optional):
  FUSEDOPT_CUDA=AUTO|ON|OFF        build the CUDA kernels (AUTO: when nvcc is found)
  FUSEDOPT_CUDA_ARCHITECTURES=...  CMAKE_CUDA_ARCHITECTURES list (see CMakeLists.txt)
  CUDACXX=/path/to/nvcc            the CUDA compiler (else nvcc on PATH, else the
                                   nvidia-cuda-nvcc pip package; see CMakeLists.txt)
  FUSEDOPT_BUILD_JOBS=N            parallel compile jobs
  FUSEDOPT_CMAKE_ARGS="..."        extra CMake arguments
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.dist import Distribution

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    """Runs CMake and places _fusedopt_ops.so (and its build record) in the package."""

    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = ROOT / "build" / "wheel"
        build_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ.copy()
        args = [
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DFUSEDOPT_OUTPUT_DIR={out_dir}",
            f"-DFUSEDOPT_CUDA={env.get('FUSEDOPT_CUDA', 'AUTO')}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if env.get("FUSEDOPT_CUDA_ARCHITECTURES"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={env['FUSEDOPT_CUDA_ARCHITECTURES']}")
        args += shlex.split(env.get("FUSEDOPT_CMAKE_ARGS", ""))
        if shutil.which("ninja") and not (build_dir / "Makefile").exists():
            args.append("-GNinja")
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True, env=env)
        jobs = env.get("FUSEDOPT_BUILD_JOBS", str(os.cpu_count() or 2))
        subprocess.run(
            ["cmake", "--build", str(build_dir), "--parallel", jobs], check=True, env=env
        )
        for name in ("_fusedopt_ops.so", "_build_config.py"):
            if not (out_dir / name).is_file():
                raise RuntimeError(f"CMake did not produce {out_dir / name}")


class BinaryDistribution(Distribution):
    def has_ext_modules(self) -> bool:  # a platform wheel, even without a CPython extension
        return True


class PlatformWheel(bdist_wheel):
    """Tags the wheel py3-none-<platform>.

    The op library is not a CPython extension: it works with any Python that
    runs the TensorFlow it was built against. The platform tag is the build
    machine's own (e.g. linux_x86_64), not manylinux: the library needs the
    build machine's libstdc++ (see README, Supported platforms).
    """

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(
    ext_modules=[Extension("fusedopt._fusedopt_ops", sources=[])],
    cmdclass={"build_ext": CMakeBuild, "bdist_wheel": PlatformWheel},
    distclass=BinaryDistribution,
)
