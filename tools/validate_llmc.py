"""Judge llm.c itself: build its train_gpt2.c with our adapter into a shared library, run the suite on it.

    python -m tools.validate_llmc PATH_TO_LLMC_CHECKOUT [--report-json OUT.json] [--report-md OUT.md]
                                  [--fixture DIR ...] [--port-skips FILE] [--port-xfails FILE] [--lib OUT.so]

The build (native/llmc_adapter.c #includes the checkout's train_gpt2.c with TESTING defined, so llm.c's
layer kernels and the adapter's llmc_* model API end up in one library):

    cc -O2 -fPIC -shared -fopenmp -DOMP -I native -I PATH native/llmc_adapter.c -o build/libllmc_llmc.so \
        -lm -Wl,-z,nodelete

then `pytest conformance/test_model.py conformance/test_kernels.py --backend lib:build/libllmc_llmc.so`
with the reports asked for. The exit status is pytest's (0: every check passed).

Without llm.c at hand, tests/standin_llmc is a stand-in with llm.c's ABI (our kernels inside), so
`python -m tools.validate_llmc tests/standin_llmc` exercises the adapter and the harness (on the
committed tiny fixtures only, unless --fixture says otherwise); it says nothing about llm.c itself.
"""
import os
from pathlib import Path
import shlex
import subprocess
import sys

from tools.options import Parser, UsageError, add_fixture_option, add_report_options, run_main

REPO_ROOT = Path(__file__).resolve().parents[1]
ADAPTER = REPO_ROOT / "native" / "llmc_adapter.c"
DEFAULT_LIB = REPO_ROOT / "build" / "libllmc_llmc.so"
STANDIN = REPO_ROOT / "tests" / "standin_llmc"


class BuildError(RuntimeError):
    pass


def build_command(llmc_dir, out, defines=(), cc=None, link=()):
    cc = cc or os.environ.get("CC", "cc")
    # -z nodelete: the library is never unloaded (cffi dlcloses it at interpreter exit), so OpenMP's idle
    # worker threads never find their code gone; without it the exit is a segfault, now and then
    return [cc, "-O2", "-fPIC", "-shared", "-fopenmp", "-DOMP", *(f"-D{d}" for d in defines),
            "-I", str(REPO_ROOT / "native"), "-I", str(llmc_dir), str(ADAPTER), "-o", str(out), "-lm",
            "-Wl,-z,nodelete", *link]


def build_adapter(llmc_dir, out=DEFAULT_LIB, defines=(), cc=None, link=()):
    """Compile native/llmc_adapter.c against llmc_dir/train_gpt2.c into the shared library `out`
    (written under a temporary name, then renamed: a failed build leaves the old library in place).
    link: extra linker arguments (the harness's tests hide functions with a version script)."""
    llmc_dir, out = Path(llmc_dir), Path(out)
    if not (llmc_dir / "train_gpt2.c").is_file():
        raise BuildError(f"{llmc_dir}: no train_gpt2.c here; give the root of an llm.c checkout")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    command = build_command(llmc_dir, tmp, defines, cc, link)
    try:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"building the llm.c adapter failed:\n$ {shlex.join(command)}\n{done.stderr.strip()}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def main(argv=None):
    p = Parser(prog="python -m tools.validate_llmc", description=__doc__.split("\n")[0])
    p.add_argument("llmc_dir", help="an llm.c checkout (the directory with train_gpt2.c), or tests/standin_llmc")
    p.add_argument("--lib", default=str(DEFAULT_LIB), help=f"the library to build (default: {DEFAULT_LIB.relative_to(REPO_ROOT)})")
    add_report_options(p)
    add_fixture_option(p)
    p.add_argument("--port-skips", metavar="FILE", help="skip list (conformance/port_lists.py)")
    p.add_argument("--port-xfails", metavar="FILE", help="expected-failure list")
    p.add_argument("--define", action="append", default=[], metavar="NAME", help="extra -D for the build")
    return run_main("tools.validate_llmc", validate, p, argv)


def validate(args):
    try:
        lib = build_adapter(args.llmc_dir, args.lib, args.define)
    except BuildError as e:
        raise UsageError(str(e)) from e
    standin = Path(args.llmc_dir).resolve() == STANDIN
    print(f"built {lib} from {args.llmc_dir}" + (" (the stand-in, not llm.c)" if standin else ""))
    command = [sys.executable, "-m", "pytest", "conformance/test_model.py", "conformance/test_kernels.py",
               "--backend", f"lib:{lib}", "-p", "no:cacheprovider"]
    fixtures = args.fixture or []
    if standin and not fixtures:   # its plain-loop sgemm would take hours on the 124M fixture
        from conformance.fixture import COMMITTED_FIXTURES, FIXTURES_DIR
        fixtures = [FIXTURES_DIR / name for name in COMMITTED_FIXTURES]
    for d in fixtures:
        command += ["--fixture", str(Path(d).resolve())]     # pytest runs in the repository root
    if args.port_skips or args.port_xfails:
        command += ["-p", "conformance.port_lists"]       # the lists' options (a no-op where conftest has it)
    for flag, value in (("--report-json", args.report_json), ("--report-md", args.report_md),
                        ("--port-skips", args.port_skips), ("--port-xfails", args.port_xfails)):
        if value:
            command += [flag, str(Path(value).resolve())]
    print("$ " + shlex.join(command), flush=True)
    return subprocess.run(command, cwd=REPO_ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
