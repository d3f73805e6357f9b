"""Prints where cuBLAS is, for native/cuda.mk: '<include dir> <lib dir> <CUDA-toolkit | nvidia-cublas-wheel>'.

The CUDA toolkit's own cuBLAS first (next to nvcc), else the nvidia-cublas wheel of this Python
(pyproject extra [cuda]; it installs under nvidia/cu13/ or nvidia/cublas/). Exits 1 with a reason
when neither has both the header and the library.
"""
import glob
import importlib.util
import os
import sys


def has_cublas(include, lib):
    return (os.path.isfile(os.path.join(include, "cublas_v2.h"))
            and bool(glob.glob(os.path.join(lib, "libcublas.so*"))))


def candidates(nvcc):
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
            yield os.path.join(home, "include"), os.path.join(home, lib), "CUDA-toolkit"
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        for sub in ("cu13", "cu12", "cublas"):
            base = os.path.join(root, sub)
            yield os.path.join(base, "include"), os.path.join(base, "lib"), "nvidia-cublas-wheel"


def main():
    nvcc = sys.argv[1] if len(sys.argv) > 1 else ""
    for include, lib, source in candidates(nvcc):
        if has_cublas(include, lib):
            print(include, lib, source)
            return 0
    print("no cuBLAS found: neither the CUDA toolkit next to nvcc nor an nvidia-cublas wheel in "
          f"{sys.executable} (make venv installs it with the [cuda] extra)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
