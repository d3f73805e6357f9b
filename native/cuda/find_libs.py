"""Prints where a CUDA library is, for native/cuda.mk: '<include dir> <lib dir> <where it came from>'.

    python find_libs.py cublas NVCC     cuBLAS and cuBLASLt: the CUDA toolkit's (next to nvcc) first, else the
                                        nvidia-cublas wheel of this Python (pyproject extra [cuda])
    python find_libs.py nccl NVCC       NCCL: the toolkit's or the system's, else the nvidia-nccl-cu13 wheel
                                        (extra [nccl]); optional: without it the library is single-GPU

Exits 1 with a reason when no place has both the header and the library.
"""

import glob
import importlib.util
import os
import sys

LIBRARIES = {  # name -> (header, library file prefix, wheel subdirectories, extra)
    "cublas": ("cublas_v2.h", "libcublas.so", ("cu13", "cu12", "cublas"), "[cuda]"),
    "nccl": ("nccl.h", "libnccl.so", ("nccl", "cu13"), "[nccl]"),
}


def found(include, lib, header, prefix):
    return os.path.isfile(os.path.join(include, header)) and bool(glob.glob(os.path.join(lib, prefix + "*")))


def candidates(nvcc, subdirs):
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        for lib in ("lib64", "lib", "targets/x86_64-linux/lib"):
            yield os.path.join(home, "include"), os.path.join(home, lib), "CUDA toolkit"
    yield "/usr/include", "/usr/lib/x86_64-linux-gnu", "system"
    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        for sub in subdirs:
            base = os.path.join(root, sub)
            yield os.path.join(base, "include"), os.path.join(base, "lib"), f"nvidia-{sub} wheel"


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in LIBRARIES:
        print(f"usage: find_libs.py {{{','.join(LIBRARIES)}}} [NVCC]", file=sys.stderr)
        return 2
    name, nvcc = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    header, prefix, subdirs, extra = LIBRARIES[name]
    for include, lib, source in candidates(nvcc, subdirs):
        if found(include, lib, header, prefix):
            print(include, lib, source.replace(" ", "-"))
            return 0
    print(
        f"no {name} found: neither next to nvcc, in the system, nor as a wheel in {sys.executable} "
        f"(pip install '.{extra}')",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
