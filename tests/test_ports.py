"""Self-test of the port harness: the plug-ins are faithful, wrong ports are caught, broken ports never take
the suite down, and a port author gets the right reasons.

- Our cpu backend judged through lib:PATH (a child process) and through cmd:COMMAND (tools/port_example.py)
  gives the same bits as judged directly, after every update.
- The llm.c adapter (native/llmc_adapter.c) builds against the stand-in llm.c (tests/standin_llmc, NOT
  llm.c: our kernels behind llm.c's ABI) and passes; bad input comes back as error codes where llm.c itself
  would exit(); a library without some llmc.h function gets the checks that need it skipped, by name.
- A lib: port that segfaults, aborts, exits or hangs is an ERROR of the checks waiting for it; the rest of
  the run and its reports survive. A cmd: port's hang is killed with its whole process group, its
  non-UTF-8 output and its failure at the first call are clear errors, and a failed call can be rerun.
- Deliberately wrong ports each FAIL, and the checks that caught them are named (and written to a report):
  bug flags of the example port (cmd:) and compile-time bugs of the stand-in (lib:).
- A real port's habits (not bit-reproducible, chatty on stdout, no kernels) get the right skip reasons
  and rerun reports.
- The cmd: adapter's call patterns keep llm.c's semantics; the ports' skip / expected-failure lists.
Most runs use the committed tiny fixtures and the example port in-process (tools.port_example.run_in_process).
"""

import json
import os
from pathlib import Path
import re
import shlex
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from backends.base import BackendUnavailable
from backends.ports import CmdBackend, PortCrashed, PortTimeout, is_unsupported, port_backend
from backends.protocol import PortError, read_arrays, write_arrays
from backends.registry import get_backend
from conformance import port_lists
from conformance.fixture import COMMITTED_FIXTURES, FIXTURES_DIR, load_fixture
from conformance.kernel_checks import KernelShape, run_kernel_check
from conformance.model_checks import (
    CHECK_NAMES,
    GRAD_NAMES,
    SEGMENTS,
    STEP0_NAMES,
    TRAIN_STEPS,
    ModelChecksStopped,
    run_model,
    run_model_checks,
)
from conformance.report import suite_meta, write_json, write_markdown
from reference.adamw import AdamWSettings
from reference.layers import KERNEL_NAMES
from reference.model import PARAM_NAMES, split_params
from tools import conform
from tools.port_example import BUGS, OUTPUT_BUGS, run_in_process
from tools.validate_llmc import STANDIN, build_adapter

REPO = FIXTURES_DIR.parent
EXAMPLE = f"{sys.executable} -m tools.port_example"
CC = os.environ.get("CC", "cc")  # as tools/validate_llmc.py builds the adapter
needs_cc = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC}) to build a port library")
# kernel shapes for the lib: ports: one token and head; sizes that are not multiples of 8 or 16
KERNEL_SHAPES = (
    KernelShape(B=1, T=1, C=3, NH=1, OC=5, V=7, Vp=9),
    KernelShape(B=3, T=5, C=12, NH=3, OC=10, V=20, Vp=24, bias=False),
)


def run_pytest(*args, env=None):
    """pytest in a process of its own, from the repository root, quiet and leaving no cache."""
    command = [sys.executable, "-m", "pytest", *args, "-q", "-p", "no:cacheprovider"]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env)


def compile_library(source, text):
    """A port library from C `text` written to `source` -> the .so's path beside it."""
    source.write_text(text)
    lib = source.with_name(f"lib{source.stem}.so")
    subprocess.run([CC, "-O2", "-fPIC", "-shared", str(source), "-o", str(lib)], check=True)
    return lib


# check families, by name without the fixture
ALL = set(CHECK_NAMES)
GRADS = {f"grad/{d}" for d in GRAD_NAMES}
TRAIN = set(SEGMENTS["train"]) - set(STEP0_NAMES)  # test_gpt2.c's loop: losses, grad norms, params, m, v
DECAY = set(SEGMENTS["decay_2d_clip"])
ABI = {name for segment, names in SEGMENTS.items() if segment.startswith("abi/") for name in names}
RERUN = set(SEGMENTS["rerun"])
CMD_SKIPPED = {
    name
    for segment in (
        "abi/accumulate",
        "abi/model_config",
        "abi/from_checkpoint",
        "abi/set_params",
        "abi/save_checkpoint",
    )
    for name in SEGMENTS[segment]
}  # not the protocol's to judge
# what a port with a wrong forward or backward fails: everything computed, none of the exact copies, the
# padding (wte's padded rows stay zero), dqkvb's key part (still noise), nor the reruns (still deterministic)
COMPUTED = (
    ALL
    - RERUN
    - {
        "logits_padding",
        "grad/dqkvb[key]",
        "wte_padding/params",
        "wte_padding/grads",
        "abi/from_checkpoint/params",
        "abi/set_params/params",
        "abi/model_config",
    }
)
AFTER_AN_UPDATE = {n for n in TRAIN | DECAY if not n.endswith("train_loss/0")} | set(SEGMENTS["abi/resume"])


# the same example ports judged under the bf16 class (their `info` says bf16: --precision bf16), whose measured
# tolerances are 3x a bf16 implementation's errors: looser, and still catching every bug (PORTING.md's table)
LOSSES = {f"train_loss/{step}" for step in range(TRAIN_STEPS)}
EXAMPLE_BUGS_BF16 = {
    "gelu-constant": {"grad/dqkvw", "grad/dln2w", "grad/dfcw", "grad/dfcb", "grad/dfcprojw", "grad/dlnfw"},
    "no-causal-mask": {"logits"} | GRADS - {"grad/dln1b", "grad/dlnfb"},
    "layernorm-eps": {"logits"} | GRADS - {"grad/dlnfb"},
    "adamw-no-bias-correction": LOSSES - {"train_loss/0", "train_loss/1", "train_loss/2"},
    "softmax-padding": {"loss"} | GRADS | LOSSES,
}


def family(*parts, within=ALL):
    return {n for n in within if any(re.fullmatch(p, n) for p in parts)}


def failed_checks(results, fixture_name=None):
    """check names (fixture prefix dropped) that failed"""
    return sorted(
        {
            r.check.split("/", 1)[1] if r.check.startswith(f"{fixture_name}/") else r.check
            for r in results
            if not r.passed
        }
    )


def inprocess_port(options):
    """The example port, each protocol call run inside this process (no process start per call)."""
    return CmdBackend(
        f"cmd:port_example {options}", f"port_example {options}", runner=lambda argv: run_in_process(argv[1:])
    )


@pytest.fixture(scope="module")
def fixtures():
    return [load_fixture(FIXTURES_DIR / name) for name in COMMITTED_FIXTURES]


@pytest.fixture(scope="module")
def tiny(fixtures):
    return fixtures[0]


@pytest.fixture(scope="module")
def small(fixtures):
    """tiny-gpt2: the smallest model, for runs of every check through a slow path."""
    return fixtures[1]


def kernel_results(backend):
    results = []
    for i, shape in enumerate(KERNEL_SHAPES):
        for name in (n for n in KERNEL_NAMES if backend.has_kernel(n)):
            results += run_kernel_check(backend, name, shape, seed=i)
    return results


def trace(backend, fixture, steps=3):
    """Everything a model-level check reads: logits, loss, grads, then `steps` training steps with the loss,
    grad norm, params, m and v of each, and the loss after the last."""
    model = backend.model(fixture.config, fixture.params, fixture.B, fixture.T)
    try:
        out = {"loss": np.float64(model.forward(fixture.x, fixture.y)), "logits": model.logits()}
        model.zero_grad()
        model.backward()
        out["grads"] = model.grads()
        for t in range(1, steps + 1):
            out[f"loss{t}"] = model.forward(fixture.x, fixture.y)
            model.zero_grad()
            model.backward()
            out[f"norm{t}"] = model.update(fixture.optimizer, t)
            out[f"params{t}"] = model.params()
            out[f"m{t}"], out[f"v{t}"] = model.optimizer_state()
        out["final_loss"] = model.forward(fixture.x, fixture.y)
    finally:
        model.close()
    return out


# ----------------------------------------------------------------------------- faithful plug-ins
def test_cpu_through_both_plugins_equals_direct(tiny):
    try:
        direct = get_backend("cpu")
    except BackendUnavailable as e:
        pytest.skip(f"cpu backend unavailable: {e}")
    want = trace(direct, tiny)
    for name in (f"lib:{direct.library.path}", f"cmd:{EXAMPLE} --backend cpu"):
        got = trace(get_backend(name), tiny)
        for key in want:
            assert np.array_equal(got[key], want[key]), f"{name}: {key} differs from the direct cpu backend"


def test_cmd_reference_port_passes(fixtures):
    port = inprocess_port("--backend reference")
    assert port.port_name == "port_example" and port.port_version and port.deterministic
    for fixture in fixtures:
        run = run_model(port, fixture)
        assert failed_checks(run.results) == []
        assert {n.check.split("/", 1)[1] for n in run.not_run} == CMD_SKIPPED
        assert all(n.verdict == "skipped" and "protocol" in n.reason for n in run.not_run), run.not_run


def test_cmd_training_loop_costs_one_call_per_step(small):
    """test_gpt2.c's loop, reading everything after every update, is one `train` call per step (plus the
    first forward's `backward` and the look-ahead step that answers the last forward)."""
    calls = []

    def counting(argv):
        calls.append(argv[3])  # port_example --backend reference OP ...
        return run_in_process(argv[1:])

    port = CmdBackend("cmd:counting", "port_example --backend reference", runner=counting)
    calls.clear()
    trace(port, small, steps=TRAIN_STEPS)
    assert calls == ["backward"] + ["train"] * (TRAIN_STEPS + 1), calls


def test_cmd_batching_keeps_llmc_semantics(tiny):
    """Patterns other than test_gpt2.c's loop: gradient accumulation, reads between updates,
    set_params, optimizer state, a forward without targets; each against the reference in-process."""
    port, ref = inprocess_port("--backend reference"), get_backend("reference")
    x, y = tiny.x, tiny.y
    settings = AdamWSettings(learning_rate=1e-3, weight_decay=0.1)

    def script(backend):
        m = backend.model(tiny.config, tiny.params, tiny.B, tiny.T)
        seen = {}
        m.forward(x, y)
        m.zero_grad()
        m.backward()
        m.forward(x, y)
        m.backward()  # accumulates: twice the gradient
        seen["grads2"] = m.grads()
        m.zero_grad()
        m.backward()
        seen["norm1"] = m.update(settings, 1)
        seen["params1"] = m.params()  # a read between updates
        seen["loss2"] = m.forward(x, y)
        m.zero_grad()
        m.backward()
        seen["norm2"] = m.update(settings, 2)
        seen["loss_no_targets"] = m.forward(x[:, :5])  # no targets, a shorter T
        seen["logits_short"] = m.logits()
        seen["m"], seen["v"] = m.optimizer_state()
        m.set_params(tiny.params)
        seen["loss_reset"] = m.forward(x, y)
        m.zero_grad()
        m.backward()
        seen["grads_reset"] = m.grads()
        m.set_optimizer_state(seen["m"], seen["v"])  # resume: a --state file
        seen["norm_resumed"] = m.update(settings, 3)
        seen["params_resumed"] = m.params()
        m.close()
        return seen

    got, want = script(port), script(ref)
    assert got["loss_no_targets"] is None and want["loss_no_targets"] is None
    # The same numpy code gives the same bits, except where the protocol itself rounds. Losses and grad
    # norms come back as float32 (the reference keeps float64): positive scalars, so one float32 rounding
    # bounds them elementwise (relative 2**-24 ~ 6e-8; rtol 1e-6 leaves room).
    for key in ("loss2", "loss_reset", "norm1", "norm2", "norm_resumed"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=0, err_msg=key)
    # grads2: the adapter sums two separately evaluated backward passes, the reference accumulates the
    # second pass into the first. dwte's two contributions (encoder, tied lm head) can cancel element by
    # element, so no elementwise relative bound holds; the rounding is bounded by the norm of each tensor:
    # a few float32 roundings (2**-24 each) of terms no larger than the tensor, well under 1e-6.
    want_grads, got_grads = split_params(want["grads2"], tiny.config), split_params(got["grads2"], tiny.config)
    for name in PARAM_NAMES:
        diff = np.linalg.norm(np.float64(got_grads[name]) - want_grads[name])
        scale = np.linalg.norm(np.float64(want_grads[name]))
        assert diff <= 1e-6 * scale, f"grads2 d{name}: ||got - want|| = {diff:.3e} > 1e-6 * ||want|| = {scale:.3e}"
    exact = want.keys() - {"loss_no_targets", "loss2", "loss_reset", "norm1", "norm2", "norm_resumed", "grads2"}
    for key in exact:
        assert np.array_equal(got[key], want[key]), f"{key} differs from the in-process reference"


@needs_cc
def test_lib_port_with_some_kernels_only(tmp_path):
    """A library exporting one kernel and no model API: that kernel is judged, the rest are skipped
    naming what is missing, and the model checks are unsupported (skipped), not errors."""
    lib = compile_library(
        tmp_path / "residual.c",
        "void residual_forward(float* out, float* inp1, float* inp2, int N) {\n"
        "    for (int i = 0; i < N; i++) out[i] = inp1[i] + inp2[i];\n}\n",
    )
    backend = get_backend(f"lib:{lib}")
    assert [k for k in KERNEL_NAMES if backend.has_kernel(k)] == ["residual_forward"]
    assert "missing encoder_forward" in backend.description
    assert backend.missing_kernel_reason("gelu_forward") == f"{lib} does not export gelu_forward"
    assert failed_checks(run_kernel_check(backend, "residual_forward", KERNEL_SHAPES[1], seed=0)) == []
    with pytest.raises(ModelChecksStopped, match="no llmc_\\* model API") as stopped:
        run_model_checks(backend, load_fixture(FIXTURES_DIR / "tiny-gpt2"))
    assert stopped.value.results == [] and is_unsupported(stopped.value.cause)
    assert {n.verdict for n in stopped.value.not_run} == {"skipped"}
    done = run_pytest(
        "conformance/test_model.py", "--backend", f"lib:{lib}", "--fixture", str(FIXTURES_DIR / "tiny-gpt2")
    )
    assert done.returncode == 0 and f"{len(CHECK_NAMES)} skipped" in done.stdout, done.stdout + done.stderr


# ----------------------------------------------------------------------------- the llm.c adapter
STANDIN_BUGS = (
    "STANDIN_BUG_ENCODER_OVERWRITE",
    "STANDIN_BUG_MATMUL_BACKWARD_OVERWRITE",
    "STANDIN_BUG_ADAMW_NO_BIAS_CORRECTION",
)
# llm.c's gpt2_update: decay on every tensor, no clipping; the other convention stops at its first update
SAVED = set(SEGMENTS["abi/save_checkpoint"])  # llm.c's train_gpt2.c writes no checkpoint
LLMC_SKIPPED = DECAY - {"decay_2d_clip/train_loss/0"} | SAVED


@pytest.fixture(scope="module")
def standin_libs(tmp_path_factory):
    """The adapter built against the stand-in, correct and with each deliberate bug: name -> backend."""
    if shutil.which(CC) is None:
        pytest.skip(f"no C compiler ({CC}) to build the adapter")
    out = tmp_path_factory.mktemp("standin")
    libs = {}
    for bug in (None, *STANDIN_BUGS):
        path = build_adapter(STANDIN, out / f"libllmc_standin_{bug or 'ok'}.so", defines=[bug] if bug else [])
        libs[bug] = port_backend(f"lib:{path}")
    return libs


def hidden_function_lib(tmp_path, function):
    """The stand-in adapter with `function` hidden from the library's exports (a linker version script)."""
    script = tmp_path / f"hide_{function}.map"
    script.write_text(f"{{ global: *; local: {function}; }};\n")
    return build_adapter(STANDIN, tmp_path / f"libllmc_no_{function}.so", link=[f"-Wl,--version-script={script}"])


def test_standin_adapter_passes(standin_libs, fixtures):
    backend = standin_libs[None]
    assert backend.port_name == "llm.c" and "kernels: all 15" in backend.description
    for fixture in fixtures:
        run = run_model(backend, fixture)
        assert failed_checks(run.results) == []
        assert {n.check.split("/", 1)[1] for n in run.not_run} == LLMC_SKIPPED
        reasons = {n.check.split("/", 1)[1]: n.reason for n in run.not_run if n.verdict == "skipped"}
        assert len(reasons) == len(run.not_run), run.not_run
        assert all(
            ("llmc_save_checkpoint" if c in SAVED else "decays every parameter") in r for c, r in reasons.items()
        )
    assert failed_checks(kernel_results(backend)) == []


@needs_cc
@pytest.mark.parametrize(
    "function,skipped,reason",
    [
        ("llmc_model_from_params", LLMC_SKIPPED, "decays every parameter"),  # llm.c's shape: checkpoints only
        ("llmc_model_config", LLMC_SKIPPED | {"abi/model_config"}, "llmc_model_config"),
        ("llmc_set_optimizer_state", LLMC_SKIPPED | set(SEGMENTS["abi/resume"]), "llmc_set_optimizer_state"),
        (
            "llmc_update",
            LLMC_SKIPPED
            | TRAIN - {"train_loss/0"}
            | set(SEGMENTS["abi/resume"])
            | {"rerun/grad_norm", "rerun/params", "rerun/m", "rerun/v"},
            "llmc_update",
        ),
    ],
)
def test_lib_without_a_function_skips_what_needs_it(tmp_path, small, function, skipped, reason):
    """Every llmc.h function a library exports is judged; each one missing skips the checks that need it,
    naming it; the rest pass."""
    backend = port_backend(f"lib:{hidden_function_lib(tmp_path, function)}")
    assert function not in backend.exports
    if function == "llmc_model_from_params":
        assert "model API from checkpoint files" in backend.description
    run = run_model(backend, small)
    assert failed_checks(run.results) == []
    assert {n.check.split("/", 1)[1] for n in run.not_run} == skipped
    assert all(n.verdict == "skipped" for n in run.not_run)
    assert any(reason in n.reason for n in run.not_run), run.not_run


def test_adapter_turns_llmc_exits_into_errors(standin_libs, tmp_path):
    """llm.c exit()s on these; through the adapter each is an error code (the library runs in a child
    process anyway; this checks it is the adapter that answers, not the crash isolation)."""
    backend = standin_libs[None]
    f = load_fixture(FIXTURES_DIR / "tiny-gpt2")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(np.array([12345, 3] + [0] * 254, "<i4").tobytes())

    def code(fn):
        try:
            fn()
        except PortCrashed as e:
            return f"crashed: {e}"
        except Exception as e:
            return getattr(e, "code", type(e).__name__)
        return 0

    m = backend.model(f.config, f.params, f.B, f.T)
    codes = {
        "checkpoint": code(lambda: backend.model_from_checkpoint(bad, 1, 8)),
        "missing": code(lambda: backend.model_from_checkpoint(tmp_path / "none.bin", 1, 8)),
        "backward_first": code(m.backward),
        "token": code(lambda: m.forward(np.full((1, 4), f.config.vocab_size, np.int32))),
        "too_long": code(lambda: m.forward(np.zeros((1, f.T + 1), np.int32))),
    }
    m.forward(f.x, f.y)
    m.zero_grad()
    m.backward()
    codes["decay_2d"] = code(lambda: m.update(AdamWSettings(decay_all=False), 1))
    codes["clip"] = code(lambda: m.update(AdamWSettings(grad_clip=1.0), 1))
    m.close()
    assert codes == {
        "checkpoint": 3,
        "missing": 2,
        "backward_first": 6,
        "token": 5,
        "too_long": 1,
        "decay_2d": 8,
        "clip": 8,
    }


# ----------------------------------------------------------------------------- crash isolation
@needs_cc
@pytest.mark.parametrize(
    "how,says",
    [
        ("segv", "killed by SIGSEGV"),
        ("abort", "killed by SIGABRT"),
        ("exit", "exited with status 1"),
        ("hang", "ran past LLMC_PORT_TIMEOUT=2 s"),
    ],
)
def test_lib_port_that_dies_is_an_error_not_the_end(standin_libs, small, monkeypatch, how, says):
    monkeypatch.setenv("STANDIN_CRASH", how)  # read by the stand-in in its child process
    monkeypatch.setenv("LLMC_PORT_TIMEOUT", "2")
    backend = port_backend(f"lib:{standin_libs[None].path}")
    model = backend.model(small.config, small.params, small.B, small.T)
    with pytest.raises(PortCrashed, match=says) as crashed:
        model.forward(small.x, small.y)
    assert isinstance(crashed.value, PortTimeout) == (how == "hang")
    with pytest.raises(PortCrashed, match="process that has ended"):
        model.logits()
    monkeypatch.delenv("STANDIN_CRASH")
    fresh = backend.model(small.config, small.params, small.B, small.T)  # a new child, without the variable
    assert np.isfinite(fresh.forward(small.x, small.y))
    fresh.close()


# what a port that crashes in forward still passes: no forward needed
NO_FORWARD = {"abi/from_checkpoint/params", "abi/set_params/params", "abi/model_config"}


@needs_cc
def test_conform_survives_a_segfaulting_lib_port(standin_libs, fixtures, tmp_path, monkeypatch, capsys):
    """STANDIN_CRASH=segv: every model check of the port that needs a forward is an ERROR row, the others
    and the reference's are judged on both fixtures, both reports are complete, the exit status is 1."""
    monkeypatch.setenv("STANDIN_CRASH", "segv")
    lib = standin_libs[None].path
    json_path, md_path = tmp_path / "crash.json", tmp_path / "crash.md"
    args = [
        "--backend",
        "reference",
        "--backend",
        f"lib:{lib}",
        "--report-json",
        str(json_path),
        "--report-md",
        str(md_path),
    ]
    for fixture in fixtures:
        args += ["--fixture", str(fixture.path)]
    assert conform.main(args) == 1
    out = capsys.readouterr().out
    report = json.loads(json_path.read_text())
    assert report["passed"] is False and report["meta"]["complete"] is True
    judged = {(r["check"], r["backend"]) for r in report["results"]}
    errors = {(n["check"], n["backend"]) for n in report["meta"]["not_run"] if n["verdict"] == "ERROR"}
    for fixture in fixtures:
        names = {f"{fixture.name}/{n}" for n in CHECK_NAMES}
        assert {(n, "reference") for n in names} - {(f"{fixture.name}/abi/model_config", "reference")} <= judged
        assert {(f"{fixture.name}/{n}", f"lib:{lib}") for n in NO_FORWARD} <= judged
        crashed = {n for n in names if n.split("/", 1)[1] not in NO_FORWARD | SAVED}  # SAVED: skipped, not exported
        assert {(n, f"lib:{lib}") for n in crashed} <= errors
    assert all(r["passed"] for r in report["results"])
    assert all("SIGSEGV" in n["reason"] for n in report["meta"]["not_run"] if n["verdict"] == "ERROR")
    matrix = md_path.read_text()
    assert f"| {fixtures[1].name}/logits | pass" in matrix and "**ERROR**" in matrix
    total, errors = 2 * 2 * len(CHECK_NAMES), 2 * (len(CHECK_NAMES) - len(NO_FORWARD) - len(SAVED))
    skipped = 2 * (1 + len(SAVED))  # the reference's model_config, the port's checkpoint writing
    passed = total - errors - skipped
    assert f"{passed} of {total} checks passed, 0 failed, {errors} could not run (ERROR), {skipped} skipped" in out


@needs_cc
def test_pytest_survives_a_segfaulting_lib_port(standin_libs, tmp_path):
    """The same in pytest: the model tests that needed a forward fail (not reached: the crash), the kernel
    tests pass, the reports are written with the ERROR rows."""
    json_path, md_path = tmp_path / "crash.json", tmp_path / "crash.md"
    done = run_pytest(
        "conformance/test_model.py",
        "conformance/test_kernels.py",
        "--backend",
        f"lib:{standin_libs[None].path}",
        "--fixture",
        str(FIXTURES_DIR / "tiny-gpt2"),
        "--report-json",
        str(json_path),
        "--report-md",
        str(md_path),
        env=dict(os.environ, STANDIN_CRASH="segv"),
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    errors = len(CHECK_NAMES) - len(NO_FORWARD) - len(SAVED)  # pytest: failed, saying not reached and why
    passed = f"{errors} failed, {15 + len(NO_FORWARD)} passed, {len(SAVED)} skipped"  # SAVED: not exported
    assert passed in done.stdout, done.stdout[-3000:]
    assert "not reached: PortCrashed" in done.stdout and "SIGSEGV" in done.stdout
    report = json.loads(json_path.read_text())
    assert len([n for n in report["meta"]["not_run"] if n["verdict"] == "ERROR"]) == errors
    assert all(r["passed"] for r in report["results"]) and "**ERROR**" in md_path.read_text()


@needs_cc
def test_lib_port_that_crashes_while_loading_is_an_error(tmp_path, small, capsys):
    """A library whose loading segfaults (a constructor) is no 'unavailable' skip: every check is an ERROR."""
    lib = compile_library(
        tmp_path / "boom.c",
        "#include <signal.h>\n__attribute__((constructor)) static void boom(void) { raise(SIGSEGV); }\n"
        "int llmc_init(void) { return 0; }\n",
    )
    with pytest.raises(PortCrashed, match="killed by SIGSEGV .*during loading the library"):
        get_backend(f"lib:{lib}")
    json_path = tmp_path / "boom.json"
    assert (
        conform.main(
            [
                "--backend",
                "reference",
                "--backend",
                f"lib:{lib}",
                "--fixture",
                str(small.path),
                "--report-json",
                str(json_path),
                "--report-md",
                str(tmp_path / "boom.md"),
            ]
        )
        == 1
    )
    assert f"{len(CHECK_NAMES)} could not run (ERROR)" in capsys.readouterr().out
    not_run = json.loads(json_path.read_text())["meta"]["not_run"]
    assert sum(n["backend"] == f"lib:{lib}" and n["verdict"] == "ERROR" for n in not_run) == len(CHECK_NAMES)


# ----------------------------------------------------------------------------- wrong ports are caught
# the checks each deliberately wrong port fails on fixtures/tiny-bytes, exactly (PORTING.md's table)
FORWARD_WRONG = COMPUTED - CMD_SKIPPED
GRAD_NORMS = family(r"(decay_2d_clip/)?grad_norm/\d") | {"abi/resume/grad_norm"}
# m and v are right after a bug of the update itself; the first gradient norm comes before any update
UPDATE_WRONG = AFTER_AN_UPDATE - {"m/0", "v/0", "grad_norm/0", "decay_2d_clip/grad_norm/0"}
EXAMPLE_BUGS = {  # example-port bug flags (cmd:)
    # a wrong GELU moves the first two gradient norms by less than their tolerance (5e-4 relative, set by
    # gpt2_124M's late steps): everything else computed fails
    "gelu-constant": FORWARD_WRONG - family(r"(decay_2d_clip/)?grad_norm/[01]") - {"abi/resume/grad_norm"},
    "no-causal-mask": FORWARD_WRONG,
    "layernorm-eps": FORWARD_WRONG,
    "softmax-padding": FORWARD_WRONG
    - {
        "abi/from_checkpoint/logits",
        "abi/set_params/logits",
        "logits",
        "abi/reshape/logits_short",
        "abi/reshape/logits",
    },
    # the bug's AdamW also forgets to clip: decay_2d_clip's first m and v are wrong too
    "adamw-no-bias-correction": UPDATE_WRONG | {"decay_2d_clip/m/0", "decay_2d_clip/v/0"},
    # what the train reply says, made wrong (the Done-when of issue 10)
    "doubled-grad-norms": GRAD_NORMS,
    "zeroed-optimizer-state": family(
        r"(decay_2d_clip/)?[mv]/\d",
        r"(decay_2d_clip/)?params/[1-9]",
        r"(decay_2d_clip/)?(grad_norm|train_loss)/([2-9]|10)",
    )
    | {"abi/resume/m", "abi/resume/v", "abi/resume/params"},
    "params-one-step-behind": family(
        r"(decay_2d_clip/)?params/\d",
        r"(decay_2d_clip/)?[mv]/[1-9]",
        r"(decay_2d_clip/)?(grad_norm|train_loss)/([1-9]|10)",
    )
    | set(SEGMENTS["abi/resume"]),
}
STANDIN_BUG_FAILS = {  # compile-time bugs of the stand-in (lib:), kernels included
    "STANDIN_BUG_ENCODER_OVERWRITE": {
        "grad/dwte",
        "abi/accumulate/grad/dwte",
        "abi/accumulate/grad/dwpe",
        "kernel/encoder_backward/dwte",
        "kernel/encoder_backward/dwpe",
    }
    | (AFTER_AN_UPDATE - DECAY),
    "STANDIN_BUG_MATMUL_BACKWARD_OVERWRITE": {"kernel/matmul_backward/dinp"},  # invisible at the model level
    "STANDIN_BUG_ADAMW_NO_BIAS_CORRECTION": UPDATE_WRONG - DECAY,
}


def test_wrong_ports_fail_and_are_named(standin_libs, tiny, tmp_path):
    assert set(EXAMPLE_BUGS) == set(BUGS) | set(OUTPUT_BUGS), "every bug flag of tools/port_example.py is exercised"
    caught, results, backends = {}, [], {}
    for bug in EXAMPLE_BUGS:
        port = inprocess_port(f"--backend reference --bug {bug}")
        got = run_model(port, tiny).results
        results += got
        backends[port.name] = port.description
        caught[bug] = set(failed_checks(got, tiny.name))
    for bug in STANDIN_BUGS:
        backend = standin_libs[bug]
        got = run_model(backend, tiny).results + kernel_results(backend)
        results += got
        backends[backend.name] = f"stand-in llm.c built with -D{bug}"
        caught[bug] = set(failed_checks(got, tiny.name))
    for bug, want in {**EXAMPLE_BUGS, **STANDIN_BUG_FAILS}.items():
        assert caught[bug] == want, (
            f"{bug}: also caught by {sorted(caught[bug] - want)}, not by {sorted(want - caught[bug])}"
        )

    write_json(results, tmp_path / "wrong_ports.json", suite_meta(backends, source="tests/test_ports.py"))
    write_markdown(results, tmp_path / "wrong_ports.md", suite_meta(backends))
    report = json.loads((tmp_path / "wrong_ports.json").read_text())
    assert report["passed"] is False
    assert "**FAIL**" in (tmp_path / "wrong_ports.md").read_text()


def test_wrong_ports_fail_under_bf16(tiny):
    """The bf16 class is tight enough: each deliberately wrong port still fails under it, and at least on the
    checks PORTING.md's bf16 table names (the forward-visible ones; the optimizer-state checks add more)."""
    assert set(EXAMPLE_BUGS_BF16) == set(BUGS)
    for bug, want in EXAMPLE_BUGS_BF16.items():
        port = inprocess_port(f"--backend reference --bug {bug} --precision bf16")
        assert port.precision == "bf16"
        caught = set(failed_checks(run_model(port, tiny).results, tiny.name))
        assert want <= caught, f"{bug} under bf16: caught by {sorted(caught)}, expected at least {sorted(want)}"


# ----------------------------------------------------------------------------- array files
def test_array_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "a.bin"
    arrays = {
        "x": np.arange(6, dtype=np.int32).reshape(2, 3),
        "loss": np.float32(1.5),
        "logits": np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32),
    }
    write_arrays(path, arrays)
    back = read_arrays(path)
    assert list(back) == list(arrays)
    for name in arrays:
        assert back[name].dtype == np.asarray(arrays[name]).dtype and np.array_equal(back[name], arrays[name])
    data = path.read_bytes()
    name_x = np.array([1], "<i4").tobytes() + b"x"
    cases = {
        "magic": b"\0\0\0\0" + data[4:],
        "truncated": data[:-3],
        "trailing": data + b"\0",
        "dtype": data[: 12 + 4 + 1] + np.array([9], "<i4").tobytes() + data[12 + 4 + 1 + 4 :],
        "header count": data[:8] + np.array([-1], "<i4").tobytes() + data[12:],
        "like an earlier one": data[:8]
        + np.array([4], "<i4").tobytes()
        + data[12:]
        + data[12 : 12 + len(name_x) + 8 + 4 * 2 + 24],  # x again
        "not UTF-8": data[:16] + b"\xff" + data[17:],
    }
    assert data[12 : 12 + len(name_x)] == name_x
    for field, content in cases.items():
        path.write_bytes(content)
        with pytest.raises(PortError, match=str(path)) as error:
            read_arrays(path)
        assert field in ("magic", "truncated", "trailing", "dtype") or field in str(error.value), error.value
    with pytest.raises(TypeError, match="float64"):
        write_arrays(path, {"bad": np.zeros(2)})


# ----------------------------------------------------------------------------- misbehaving cmd: ports
def _script_port(tmp_path, name, body):
    """cmd: a Python script; `body` runs for every call but info (argv: sys.argv[1:])."""
    script = tmp_path / f"{name}.py"
    script.write_text(
        "import json, os, subprocess, sys, time\n"
        "if sys.argv[1] == 'info':\n"
        "    print(json.dumps({'protocol': 1, 'name': " + repr(name) + "}))\n"
        "    sys.exit(0)\n" + body
    )
    return f"cmd:{sys.executable} {script}"


def test_cmd_port_errors_are_clear(monkeypatch, tmp_path):
    with pytest.raises(BackendUnavailable, match="cannot run"):
        get_backend("cmd:/nonexistent/port")
    with pytest.raises(PortError, match="printed list JSON, expected an object"):
        get_backend(f"cmd:{sys.executable} -c 'print([1])'")
    monkeypatch.setenv("LLMC_PORT_TIMEOUT", "0.5")
    with pytest.raises(
        PortTimeout,
        match=r"ran past LLMC_PORT_TIMEOUT=0.5 s and was killed; a slower port can "
        r"have more time: LLMC_PORT_TIMEOUT=SECONDS",
    ):
        get_backend(f"cmd:{sys.executable} -c 'import time; time.sleep(10)'")
    monkeypatch.delenv("LLMC_PORT_TIMEOUT")
    with pytest.raises(BackendUnavailable, match="exited with status 2"):
        get_backend(f"cmd:{EXAMPLE} --backend cpu --bug gelu-constant")
    with pytest.raises(BackendUnavailable, match="no such shared library"):
        get_backend("lib:/nonexistent/libport.so")
    # non-UTF-8 bytes: on info's stdout an error naming the command and its exit status; on a failing
    # call's stderr, shown escaped
    with pytest.raises(PortError, match=r"info`.* exited with status 0 but printed bytes that are not UTF-8"):
        get_backend(f"cmd:{sys.executable} -c 'import sys; sys.stdout.buffer.write(b\"\\xff\\xfe\")'")
    port = get_backend(_script_port(tmp_path, "binary", "sys.stderr.buffer.write(b'bad \\xff byte'); sys.exit(5)\n"))
    fixture = load_fixture(FIXTURES_DIR / "tiny-gpt2")
    model = port.model(fixture.config, fixture.params, fixture.B, fixture.T)
    with pytest.raises(PortError, match=r"exited with status 5: bad \\xff byte"):
        model.forward(fixture.x, fixture.y)
    model.close()


def test_cmd_port_timeout_kills_its_process_group(tmp_path, monkeypatch, small):
    """A port that started a child of its own and hangs: the timeout kills both."""
    pid_file = tmp_path / "grandchild.pid"
    port = get_backend(
        _script_port(
            tmp_path,
            "hangs",
            (
                f"child = subprocess.Popen(['sleep', '300'])\nopen({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                "time.sleep(300)\n"
            ),
        )
    )
    monkeypatch.setenv("LLMC_PORT_TIMEOUT", "2")
    model = port.model(small.config, small.params, small.B, small.T)
    with pytest.raises(PortTimeout, match="ran past LLMC_PORT_TIMEOUT=2 s"):
        model.forward(small.x, small.y)
    model.close()
    pid = int(pid_file.read_text())
    for _ in range(50):  # reaped by init a moment later
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the port's child {pid} outlived the timeout")


def test_cmd_port_failing_at_first_call(tmp_path, monkeypatch, small, capsys):
    """Every check is an ERROR row, the summary counts them, and the failed call can be rerun from what the
    error says (its inputs are kept)."""
    monkeypatch.setenv("LLMC_PORT_KEEP_DIR", str(tmp_path / "kept"))
    (tmp_path / "kept").mkdir()
    name = _script_port(tmp_path, "fails", "print('no luck', file=sys.stderr)\nsys.exit(7)\n")
    json_path = tmp_path / "fails.json"
    assert (
        conform.main(
            [
                "--backend",
                name,
                "--fixture",
                str(small.path),
                "--report-json",
                str(json_path),
                "--report-md",
                str(tmp_path / "fails.md"),
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    errors = len(CHECK_NAMES) - len(CMD_SKIPPED)
    assert (
        f"0 of {len(CHECK_NAMES)} checks passed, 0 failed, {errors} could not run (ERROR), "
        f"{len(CMD_SKIPPED)} skipped (unsupported)"
    ) in out
    not_run = json.loads(json_path.read_text())["meta"]["not_run"]
    assert sum(n["verdict"] == "ERROR" for n in not_run) == errors
    reason = next(n["reason"] for n in not_run if n["check"].endswith("/logits"))
    assert "exited with status 7: no luck" in reason and str(tmp_path / "kept") in reason
    rerun = shlex.split(reason.split("to rerun it: ", 1)[1])
    assert Path(rerun[rerun.index("--model") + 1]).exists() and Path(rerun[rerun.index("--batch") + 1]).exists()
    assert subprocess.run(rerun, capture_output=True).returncode == 7


# ----------------------------------------------------------------------------- a real port's habits
def test_real_port_scenario(tmp_path):
    """A port like the Java one of issue 10: not bit-reproducible, chatty on stdout and stderr, no kernels.
    Everything passes; kernels skip saying the protocol has none and how to get them; each rerun check is
    an expected failure showing the difference (informational, never a silent pass), in the reports too."""
    name = f"cmd:{EXAMPLE} --backend cpu --noise --chatty"
    json_path, md_path = tmp_path / "port.json", tmp_path / "port.md"
    done = run_pytest(
        "conformance/test_model.py",
        "conformance/test_kernels.py",
        "-rsx",
        "--backend",
        name,
        "--fixture",
        str(FIXTURES_DIR / "tiny-gpt2"),
        "--report-json",
        str(json_path),
        "--report-md",
        str(md_path),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "the command-line protocol (cmd:) exposes no kernels" in done.stdout
    assert "plug the port in as lib:PATH" in done.stdout and "has no kernel" not in done.stdout
    assert "DIFFERS (informational" in done.stdout, done.stdout[-3000:]
    report = json.loads(json_path.read_text())
    reruns = [r for r in report["results"] if "/rerun/" in r["check"]]
    assert len(reruns) == len(SEGMENTS["rerun"]) and any(r["informational"] for r in reruns)
    assert all(r["passed"] for r in report["results"])
    assert "differs (" in md_path.read_text()


def test_deterministic_port_that_differs_fails(tmp_path):
    """The same noise from a port that declares itself deterministic: the rerun checks fail."""
    port = inprocess_port("--backend reference --noise")
    port.deterministic = True
    run = run_model(port, load_fixture(FIXTURES_DIR / "tiny-gpt2"), segments=("train", "rerun"))
    assert {n for n in failed_checks(run.results, "tiny-gpt2") if n.startswith("rerun/")}


# ----------------------------------------------------------------------------- ports that stop part way
def _port_without_train(tmp_path, exit_status):
    """cmd: the example port, except that `train` exits with exit_status (3: unsupported, 1: a crash)."""
    script = tmp_path / f"no_train_{exit_status}.py"
    script.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "if 'train' in sys.argv:\n    print('this port does not train', file=sys.stderr)\n"
        f"    sys.exit({exit_status})\n"
        "from tools.port_example import main\nsys.exit(main())\n"
    )
    return f"cmd:{sys.executable} {script} --backend reference"


def _matrix_cell(markdown, check, column=-1):
    """The support matrix's cell of a check (default: the last backend's column)."""
    row = next(line for line in markdown.read_text().splitlines() if line.startswith(f"| {check} |"))
    return row.strip("| ").split(" | ")[column]


def test_unsupported_training_is_skipped_in_conform(tmp_path, small, capsys):
    """Exit 3 on `train`: what needs no update is judged, the rest is 'skipped', the run passes."""
    md = tmp_path / "unsupported.md"
    assert (
        conform.main(
            [
                "--backend",
                "reference",
                "--backend",
                _port_without_train(tmp_path, 3),
                "--fixture",
                str(small.path),
                "--report-json",
                str(tmp_path / "u.json"),
                "--report-md",
                str(md),
            ]
        )
        == 0
    )
    assert "unsupported: port_example: train unsupported: this port does not train" in capsys.readouterr().out
    assert _matrix_cell(md, f"{small.name}/loss").startswith("pass")
    assert _matrix_cell(md, f"{small.name}/train_loss/0").startswith("pass")
    assert _matrix_cell(md, f"{small.name}/grad_norm/0") == "skipped"
    assert _matrix_cell(md, f"{small.name}/abi/reshape/logits").startswith("pass")


def test_crash_in_training_is_an_error_in_conform(tmp_path, small, capsys):
    """Exit 1 on `train`: the checks before it are kept, the run fails, and the matrix says ERROR."""
    md = tmp_path / "error.md"
    assert (
        conform.main(
            [
                "--backend",
                "reference",
                "--backend",
                _port_without_train(tmp_path, 1),
                "--fixture",
                str(small.path),
                "--report-json",
                str(tmp_path / "e.json"),
                "--report-md",
                str(md),
            ]
        )
        == 1
    )
    assert re.search(r"ERROR \[\d\]", capsys.readouterr().out)
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["passed"] is False
    assert _matrix_cell(md, f"{small.name}/loss").startswith("pass")
    assert _matrix_cell(md, f"{small.name}/grad_norm/0") == "**ERROR**"


def test_unsupported_training_is_skipped_in_pytest(tmp_path, small):
    done = run_pytest(
        "conformance/test_model.py", "--backend", _port_without_train(tmp_path, 3), "--fixture", str(small.path)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\d+ passed, \d+ skipped", done.stdout), done.stdout


# ----------------------------------------------------------------------------- skip / xfail lists
def test_port_list_parsing_and_matching(tmp_path):
    path = tmp_path / "skips.txt"
    path.write_text(
        "# llm.c decays every parameter\n*decay_2d*\n\n"
        "conformance/test_model.py::test_gradient[dwte-lib:x.so-tiny-bytes]  # padded rows\n"
        "tiny-bytes/train_loss/?\n"
    )
    entries = port_lists.read_list(path)
    assert [e.reason for e in entries] == ["llm.c decays every parameter", "padded rows", "listed"]
    assert entries[1].matches("conformance/test_model.py::test_gradient[dwte-lib:x.so-tiny-bytes]")
    assert not entries[1].matches("conformance/test_model.py::test_gradient[d-lib:x.so-tiny-bytes]")
    assert port_lists.unmatched(entries, ["a_decay_2d_b", "tiny-bytes/train_loss/3"]) == [entries[1]]
    path.write_text("two patterns here\n")
    with pytest.raises(ValueError, match="skips.txt:1"):
        port_lists.read_list(path)


def test_port_lists_in_pytest(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n@pytest.mark.parametrize('g', ['dwte', 'dwpe', 'dln1w'])\n"
        "def test_gradient(g):\n    assert g != 'dwpe'\n"
    )
    (tmp_path / "skips.txt").write_text("test_gradient[dwte]  # known\n*stale*\n")
    (tmp_path / "xfails.txt").write_text("*test_gradient[dwpe]\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "conformance.port_lists",
            "-p",
            "no:cacheprovider",
            "-rsx",
            "--port-skips",
            "skips.txt",
            "--port-xfails",
            "xfails.txt",
            "test_x.py",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped, 1 xfailed" in done.stdout
    assert "skips.txt:1: known" in done.stdout
    assert "'*stale*' matches no collected test" in done.stdout


def test_port_lists_for_conform_results(small):
    results = run_model(get_backend("reference"), small, segments=("train",)).results
    skips = [port_lists.Entry("*/grad/*", "no grads", "s:1")]
    xfails = [port_lists.Entry("*/loss", "known", "x:1"), port_lists.Entry("*nothing*", "stale", "x:2")]
    kept, notes = port_lists.apply_to_results(results, skips, xfails)
    assert not any("/grad/" in r.check for r in kept)
    loss = next(r for r in kept if r.check.endswith("/loss"))
    assert not loss.passed and "unexpectedly passed" in loss.detail  # the reference passes it
    assert any("'*nothing*' matches no check" in n for n in notes)
