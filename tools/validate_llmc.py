"""Judge llm.c itself: build its train_gpt2.c with our adapter into a shared library, run the suite on it.

    python -m tools.validate_llmc PATH_TO_LLMC_CHECKOUT [--report-json OUT.json] [--report-md OUT.md]
                                  [--fixture DIR ...] [--port-skips FILE] [--port-xfails FILE] [--lib OUT.so]

The build (native/llmc_adapter.c #includes the checkout's train_gpt2.c with TESTING defined, so llm.c's
layer kernels and the adapter's llmc_* model API end up in one library, with libllmc's host C core beside them):

    cc -O2 -fPIC -shared -fopenmp -DOMP -I native -I PATH native/llmc_adapter.c native/core/*.c \
        -o build/libllmc_llmc.so -lm -Wl,-z,nodelete

then `pytest conformance/test_model.py conformance/test_kernels.py --backend lib:build/libllmc_llmc.so`
with the reports asked for. The exit status is pytest's (0: every check passed).

Without llm.c at hand, tests/standin_llmc is a stand-in with llm.c's ABI (our kernels inside), so
`python -m tools.validate_llmc tests/standin_llmc` exercises the adapter and the harness (on the
committed tiny fixtures only, unless --fixture says otherwise); it says nothing about llm.c itself.

With --cuda it judges llm.c's CUDA programs instead, on the GPU: native/llmc_adapter_cuda.cu #includes
train_gpt2.cu (bf16 mixed precision, llm.c's default build) and native/llmc_adapter_cuda_fp32.cu
train_gpt2_fp32.cu, each with TESTING defined, into two libraries (LIB with _bf16 / _fp32 before .so):

    cc -std=gnu11 -O2 -fPIC -c native/core/*.c         (libllmc's host C core, as native/cuda.mk builds it)
    nvcc -O3 --use_fast_math -std=c++17 [-DENABLE_BF16] -shared -cudart static -Xcompiler -fPIC,-fvisibility=hidden \
        -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 -I native -I PATH \
        -I CUBLAS_INCLUDE native/llmc_adapter_cuda[_fp32].cu core/*.o -o LIB -L CUBLAS_LIB -lcublas -lcublasLt

(llm.c's Makefile flags, cuBLAS found as native/cuda.mk finds it), then the suite on each: the bf16
library judged under the bf16 precision class, the fp32 one under tf32 (train_gpt2_fp32.cu's main() turns
on cuBLAS's TF32 math on sm_80 and newer), each writing its reports (REPORT with _bf16 / _fp32 before the
suffix). The exit status is 0 when both passed. tests/standin_llmc has a CUDA stand-in too, whose model is
the zero model: --cuda on it builds the two libraries (proving they compile and link) and runs nothing.
"""

import hashlib
import os
from pathlib import Path
import shlex
import shutil
import subprocess
import sys
import tempfile

from tools.options import Parser, UsageError, add_fixture_option, add_report_options, run_main

REPO_ROOT = Path(__file__).resolve().parents[1]
ADAPTER = REPO_ROOT / "native" / "llmc_adapter.c"
CORE_SOURCES = sorted((REPO_ROOT / "native" / "core").glob("*.c"))  # errors, checks, the checkpoint reader
DEFAULT_LIB = REPO_ROOT / "build" / "libllmc_llmc.so"
STANDIN = REPO_ROOT / "tests" / "standin_llmc"
# --cuda: variant -> (adapter, the llm.c file it includes, llm.c's defines for it, the precision class it is judged by)
CUDA_VARIANTS = {
    "bf16": (REPO_ROOT / "native" / "llmc_adapter_cuda.cu", "train_gpt2.cu", ("ENABLE_BF16",), "bf16"),
    "fp32": (REPO_ROOT / "native" / "llmc_adapter_cuda_fp32.cu", "train_gpt2_fp32.cu", (), "tf32"),
}
DEFAULT_CUDA_LIB = REPO_ROOT / "build" / "libllmc_llmc_cuda.so"
FIND_LIBS = REPO_ROOT / "native" / "cuda" / "find_libs.py"


class BuildError(RuntimeError):
    pass


def build_command(llmc_dir, out, defines=(), cc=None, link=()):
    cc = cc or os.environ.get("CC", "cc")
    # -z nodelete: the library is never unloaded (cffi dlcloses it at interpreter exit), so OpenMP's idle
    # worker threads never find their code gone; without it the exit is a segfault, now and then
    return [
        cc,
        "-O2",
        "-fPIC",
        "-shared",
        "-fopenmp",
        "-DOMP",
        *(f"-D{d}" for d in defines),
        "-I",
        str(REPO_ROOT / "native"),
        "-I",
        str(llmc_dir),
        str(ADAPTER),
        *map(str, CORE_SOURCES),
        "-o",
        str(out),
        "-lm",
        "-Wl,-z,nodelete",
        *link,
    ]


def build_adapter(llmc_dir, out=DEFAULT_LIB, defines=(), cc=None, link=()):
    """Compile native/llmc_adapter.c against llmc_dir/train_gpt2.c into the shared library `out`
    (written under a temporary name, then renamed: a failed build leaves the old library in place).
    link: extra linker arguments (the harness's tests hide functions with a version script)."""
    llmc_dir, out = Path(llmc_dir), Path(out)
    if not (llmc_dir / "train_gpt2.c").is_file():
        raise BuildError(f"{llmc_dir}: no train_gpt2.c here; give the root of an llm.c checkout")
    return _compile(lambda tmp: build_command(llmc_dir, tmp, defines, cc, link), out)


def _compile(command_for, out):
    """Runs command_for(tmp), which writes the library tmp, then renames it to out: a failed build leaves
    the old library in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    command = command_for(tmp)
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"building the llm.c adapter failed:\n$ {shlex.join(command)}\n{done.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def variant_path(path, variant):
    """LIB.so -> LIB_bf16.so: where --cuda puts each variant's library and reports."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{variant}{path.suffix}")


def find_nvcc():
    nvcc = os.environ.get("NVCC") or shutil.which("nvcc")
    if not nvcc:
        raise BuildError("no nvcc (set NVCC or put it on the PATH): the CUDA adapter cannot be built")
    return nvcc


def find_cublas(nvcc):
    """(include dir, lib dir) of cuBLAS, decided by native/cuda/find_libs.py as native/cuda.mk decides it."""
    done = subprocess.run([sys.executable, str(FIND_LIBS), "cublas", nvcc], capture_output=True, text=True)
    if done.returncode != 0:
        raise BuildError(done.stderr.strip())
    include, lib, _source = done.stdout.split()
    return include, lib


def _nvml_link(nvcc, includes):
    """llm.c's llmc/mfu.h uses NVML when nvcc finds nvml.h; the library then links libnvidia-ml (the
    CUDA toolkit's stub, the driver's library at run time). [] where nvml.h is not found."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.cu"
        probe.write_text("#if __has_include(<nvml.h>)\nLLMC_NVML_FOUND\n#endif\n")
        done = subprocess.run([nvcc, "-E", *includes, str(probe)], capture_output=True, text=True)
    if "LLMC_NVML_FOUND" not in done.stdout:
        return []
    home = Path(nvcc).resolve().parents[1]
    for stubs in (home / "lib64" / "stubs", home / "targets" / "x86_64-linux" / "lib" / "stubs"):
        if list(stubs.glob("libnvidia-ml.so*")):
            return ["-L", str(stubs), "-lnvidia-ml"]
    raise BuildError(
        f"nvcc finds nvml.h, which llm.c's llmc/mfu.h then uses, but {home} has no lib64/stubs/libnvidia-ml.so to link"
    )


def core_objects(outdir, cc=None):
    """libllmc's host C core compiled into outdir as native/cuda.mk compiles it for the CUDA library (C, no
    OpenMP); the object paths."""
    cc = cc or os.environ.get("CC", "cc")
    objects = []
    for source in CORE_SOURCES:
        obj = Path(outdir) / f"{source.stem}.o"
        command = [cc, "-std=gnu11", "-O2", "-fPIC", "-c", str(source), "-o", str(obj)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"building libllmc's core failed:\n$ {shlex.join(command)}\n{done.stderr.strip()}")
        objects.append(obj)
    return objects


def cuda_build_command(llmc_dir, out, variant, nvcc, cublas, objects, defines=()):
    """nvcc with llm.c's Makefile flags (-O3 --use_fast_math, -DENABLE_BF16 for train_gpt2.cu), sm_90 code
    plus compute_90 PTX as native/cuda.mk builds ours, the core's objects linked in, only the llmc_* API
    exported, cuBLAS's RPATH."""
    adapter, source, llmc_defines, _precision = CUDA_VARIANTS[variant]
    include, lib = cublas
    includes = ["-I", str(REPO_ROOT / "native"), "-I", str(llmc_dir), "-I", include]
    source_id = f"{source}@sha256:{hashlib.sha256((Path(llmc_dir) / source).read_bytes()).hexdigest()[:16]}"
    return [
        nvcc,
        "-O3",
        "--use_fast_math",
        "-std=c++17",
        "-shared",
        "-cudart",
        "static",
        "-Xcompiler",
        "-fPIC,-fvisibility=hidden",
        "-gencode",
        "arch=compute_90,code=sm_90",
        "-gencode",
        "arch=compute_90,code=compute_90",
        *(f"-D{d}" for d in (*llmc_defines, *defines)),
        f'-DLLMC_SOURCE_ID="{source_id}"',
        *includes,
        str(adapter),
        *map(str, objects),
        "-o",
        str(out),
        "-L",
        lib,
        "-Xlinker",
        f"-l:{_library(lib, 'libcublas')},-l:{_library(lib, 'libcublasLt')},-rpath,{lib}",
        "-Xlinker",
        "--no-undefined",  # a symbol nothing provides fails here, not at dlopen on the GPU machine
        *_nvml_link(nvcc, includes),
    ]


def _library(lib, name):
    """The file to link by name, as native/cuda.mk picks it: the wheel has only versioned ones (libcublas.so.13)."""
    found = sorted(Path(lib).glob(f"{name}.so*"))
    if not found:
        raise BuildError(f"{lib}: no {name}.so*")
    return found[0].name


def build_cuda_adapter(llmc_dir, variant, out, defines=(), nvcc=None):
    """Compile the CUDA adapter of variant ("bf16": train_gpt2.cu, "fp32": train_gpt2_fp32.cu) against
    llmc_dir into the shared library out."""
    llmc_dir, out = Path(llmc_dir), Path(out)
    source = CUDA_VARIANTS[variant][1]
    if not (llmc_dir / source).is_file():
        raise BuildError(f"{llmc_dir}: no {source} here; give the root of an llm.c checkout")
    nvcc = nvcc or find_nvcc()
    cublas = find_cublas(nvcc)
    with tempfile.TemporaryDirectory() as objdir:
        objects = core_objects(objdir)
        return _compile(lambda tmp: cuda_build_command(llmc_dir, tmp, variant, nvcc, cublas, objects, defines), out)


def main(argv=None):
    p = Parser(prog="python -m tools.validate_llmc", description=__doc__.split("\n")[0])
    p.add_argument("llmc_dir", help="an llm.c checkout (the directory with train_gpt2.c), or tests/standin_llmc")
    p.add_argument(
        "--lib",
        help=f"the library to build (default: {DEFAULT_LIB.relative_to(REPO_ROOT)}; with --cuda "
        f"{DEFAULT_CUDA_LIB.relative_to(REPO_ROOT)}, whose name gets _bf16 and _fp32)",
    )
    p.add_argument(
        "--cuda",
        action="store_true",
        help="judge llm.c's CUDA programs train_gpt2.cu (bf16) and "
        "train_gpt2_fp32.cu (TF32) on the GPU instead of train_gpt2.c",
    )
    add_report_options(p)
    add_fixture_option(p)
    p.add_argument("--port-skips", metavar="FILE", help="skip list (conformance/port_lists.py)")
    p.add_argument("--port-xfails", metavar="FILE", help="expected-failure list")
    p.add_argument("--define", action="append", default=[], metavar="NAME", help="extra -D for the build")
    return run_main("tools.validate_llmc", validate, p, argv)


def validate(args):
    if args.cuda:
        return validate_cuda(args)
    try:
        lib = build_adapter(args.llmc_dir, args.lib or DEFAULT_LIB, args.define)
    except BuildError as e:
        raise UsageError(str(e)) from e
    standin = Path(args.llmc_dir).resolve() == STANDIN
    print(f"built {lib} from {args.llmc_dir}" + (" (the stand-in, not llm.c)" if standin else ""))
    fixtures = args.fixture or []
    if standin and not fixtures:  # its plain-loop sgemm would take hours on the 124M fixture
        from conformance.fixture import COMMITTED_FIXTURES, FIXTURES_DIR

        fixtures = [FIXTURES_DIR / name for name in COMMITTED_FIXTURES]
    command = suite_command(lib, args, fixtures)
    print("$ " + shlex.join(command), flush=True)
    return subprocess.run(command, cwd=REPO_ROOT).returncode


def suite_command(lib, args, fixtures, variant=None):
    """pytest on the model and kernel checks of lib:LIB, with args' reports (named for variant) and lists."""
    command = [
        sys.executable,
        "-m",
        "pytest",
        "conformance/test_model.py",
        "conformance/test_kernels.py",
        "--backend",
        f"lib:{lib}",
        "-p",
        "no:cacheprovider",
    ]
    for d in fixtures:
        command += ["--fixture", str(Path(d).resolve())]  # pytest runs in the repository root
    if args.port_skips or args.port_xfails:
        command += ["-p", "conformance.port_lists"]  # the lists' options (a no-op where conftest has it)
    for flag, value in (("--report-json", args.report_json), ("--report-md", args.report_md)):
        if value:
            command += [flag, str(Path(variant_path(value, variant) if variant else value).resolve())]
    for flag, value in (("--port-skips", args.port_skips), ("--port-xfails", args.port_xfails)):
        if value:
            command += [flag, str(Path(value).resolve())]
    return command


def validate_cuda(args):
    """Both CUDA adapters built, then the suite on each under its precision class; 0 when both passed."""
    from conformance.fixture import CHECKPOINT, GPT2_124M_FIXTURE

    standin = Path(args.llmc_dir).resolve() == STANDIN
    if not (standin or args.fixture or (GPT2_124M_FIXTURE / CHECKPOINT).exists()):
        raise UsageError(
            f"{GPT2_124M_FIXTURE} is missing, and llm.c's CUDA programs refuse both committed tiny "
            "fixtures (PORTING.md says why): nothing would be judged. Make it with `python -m "
            "tools.make_fixtures --model d12 -B 4 -T 64 fixtures/gpt2_124M`, or give --fixture"
        )
    libs = {}
    try:
        for variant in CUDA_VARIANTS:
            out = variant_path(args.lib or DEFAULT_CUDA_LIB, variant)
            libs[variant] = build_cuda_adapter(args.llmc_dir, variant, out, args.define)
            print(f"built {out} from {Path(args.llmc_dir) / CUDA_VARIANTS[variant][1]}", flush=True)
    except BuildError as e:
        raise UsageError(str(e)) from e
    if standin:
        print(
            "the CUDA stand-in's model is the zero model, not GPT-2: both adapters compile and link; "
            "the suite is not run on it"
        )
        return 0
    status = 0
    for variant, lib in libs.items():
        precision = CUDA_VARIANTS[variant][3]
        command = suite_command(lib, args, args.fixture or [], variant)
        print(f"$ LLMC_PORT_PRECISION={precision} " + shlex.join(command), flush=True)
        done = subprocess.run(command, cwd=REPO_ROOT, env={**os.environ, "LLMC_PORT_PRECISION": precision})
        status = status or done.returncode
    return status


if __name__ == "__main__":
    sys.exit(main())
