"""Which BLAS kernels a benchmark actually ran, asked of the libraries themselves at run time.

OpenBLAS built with DYNAMIC_ARCH (the scipy-openblas32 wheel libllmc_cpu links, and numpy's own
scipy-openblas64) picks its kernels for the CPU when it loads, unless OPENBLAS_CORETYPE forces a core:
openblas_get_corename() says which it picked. Build-time descriptions (numpy.show_config's "openblas
configuration", llmc_build_info) name the build machine's core, not this one's. PyTorch's CPU matmuls go
to MKL (torch.__config__.show(): BLAS_INFO=mkl), whose code branch for this CPU mkl_cbwr_get_auto_branch
reports.

Symbols are looked up through a library's own handle (dlsym searches it and its dependencies), so the
answer is about the BLAS that library is linked against, and the file that provides it is found from the
function's address in /proc/self/maps.
"""

import ctypes
import os
import re

FORCING_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

# mkl_service.h's MKL_CBWR_* branch values
MKL_BRANCHES = {
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    11: "AVX512_MIC",
    12: "AVX512",
    13: "AVX512_MIC_E1",
    14: "AVX512_E1",
}


def forced_core_warning(environ=os.environ):
    """A one-line warning when the environment forces OpenBLAS's choice of kernels, else None."""
    forced = {k: environ[k] for k in FORCING_ENV if environ.get(k)}
    if "OPENBLAS_CORETYPE" not in forced:
        return None
    settings = " ".join(f"{k}={v}" for k, v in forced.items())
    return (
        f"{settings} forces OpenBLAS's {forced['OPENBLAS_CORETYPE']} kernels whatever this CPU is: "
        f"figures measured so are not what an unset environment gets (env -u {' -u '.join(forced)} ...)"
    )


def _mapped_file(address):
    """The file whose mapping in this process holds `address`, or None."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                if lo <= address < hi and len(fields) == 6:
                    return fields[5].strip()
    except OSError:
        pass
    return None


def _handle(path):
    """ctypes handle of an already loaded library (RTLD_NOLOAD: never loads a second copy)."""
    try:
        return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return None


def openblas_info(library_path):
    """{corename, config, library} of the OpenBLAS that the loaded library at library_path resolves to
    (OpenBLAS itself, or a library linked against it); None when it resolves to no OpenBLAS."""
    handle = _handle(library_path)
    if handle is None:
        return None
    # plain OpenBLAS, the scipy-openblas32 wheel (scipy_ prefix), numpy's scipy-openblas64 (and 64_ suffix)
    for prefix in ("scipy_", ""):
        for suffix in ("", "64_"):
            try:
                corename = getattr(handle, f"{prefix}openblas_get_corename{suffix}")
                config = getattr(handle, f"{prefix}openblas_get_config{suffix}")
            except AttributeError:
                continue
            corename.restype = config.restype = ctypes.c_char_p
            address = ctypes.cast(corename, ctypes.c_void_p).value
            return {
                "blas": "OpenBLAS",
                "corename": corename().decode(),
                "config": config().decode().strip(),
                "library": _mapped_file(address),
            }
    return None


def numpy_blas():
    """What numpy's matmul (the reference backend) runs on."""
    import numpy as np

    try:
        from numpy._core import _multiarray_umath
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath
    info = openblas_info(_multiarray_umath.__file__)
    if info is None:
        blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
        info = {"blas": f"{blas.get('name', '?')} {blas.get('version', '')}".strip(), "corename": None}
    info["numpy"] = np.__version__
    return info


def torch_blas(torch):
    """What PyTorch's CPU matmul runs on: its BLAS (BLAS_INFO), MKL's version and code branch, and the CPU
    capability ATen's own kernels were dispatched to."""
    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    info = {
        "blas": blas[1].upper() if blas else "?",
        "corename": None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    handle = _handle(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    if handle is not None and hasattr(handle, "MKL_Get_Version_String"):
        buf = ctypes.create_string_buffer(256)
        handle.MKL_Get_Version_String(buf, len(buf))
        info["config"] = buf.value.decode()
        # the public mkl_cbwr_get_auto_branch is not exported by libtorch_cpu; its implementation is
        branch = getattr(handle, "mkl_serv_cbwr_get_auto_branch", None)
        if branch is not None:
            code = branch()
            info["corename"] = f"{MKL_BRANCHES.get(code, code)} branch"
    return info


def describe(info):
    """One short phrase: 'OpenBLAS Haswell', 'MKL AVX512_E1 branch, ATen AVX512'."""
    if not info:
        return "-"
    text = f"{info['blas']} {info['corename'] or '(kernel unknown)'}"
    return text + (f", ATen {info['cpu_capability']}" if info.get("cpu_capability") else "")
