"""Builds fusedopt's platform wheel: CMake compiles _fusedopt_ops.so (the
TensorFlow op library) and fusedopt._native (the TensorFlow-free pybind11 module).

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

ROOT = Path(__file__).resolve().parent


class CMakeBuild(build_ext):
    """Runs CMake and places _fusedopt_ops.so, its build record and _native in the package."""

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
        if not list(out_dir.glob("_native.*.so")):
            raise RuntimeError(f"CMake did not produce the _native module in {out_dir}")


class BinaryDistribution(Distribution):
    def has_ext_modules(self) -> bool:  # a platform wheel, even without a CPython extension
        return True


setup(
    ext_modules=[Extension("fusedopt._fusedopt_ops", sources=[])],
    # A CPython extension (fusedopt._native) is inside: the wheel is tagged
    # cpXY-cpXY-<platform>, the build machine's platform (see README).
    cmdclass={"build_ext": CMakeBuild},
    distclass=BinaryDistribution,
)
