"""Self-test of the port harness: the plug-ins are faithful, and wrong ports are caught.

- Our cpu backend judged through lib:PATH and through cmd:COMMAND (tools/port_example.py) gives the
  same bits as judged directly.
- The llm.c adapter (native/llmc_adapter.c) builds against the stand-in llm.c (tests/standin_llmc,
  NOT llm.c: our kernels behind llm.c's ABI) and passes the model and kernel checks; bad input comes back
  as error codes where llm.c itself would exit().
- Deliberately wrong ports each FAIL, and the checks that caught them are named (and written to a report):
  bug flags of the example port (cmd:) and compile-time bugs of the stand-in (lib:).
- The cmd: adapter's batching keeps llm.c's semantics in patterns other than test_gpt2.c's loop.
- The ports' skip / expected-failure lists.
Everything runs on the committed tiny fixtures, in well under a minute.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from backends.base import BackendUnavailable
from backends.ports import TRAIN_LOOKAHEAD, is_unsupported, port_backend
from backends.protocol import PortError, read_arrays, write_arrays
from backends.registry import get_backend
from conformance import port_lists
from conformance.fixture import COMMITTED_FIXTURES, FIXTURES_DIR, load_fixture
from conformance.kernel_checks import KernelShape, run_kernel_check
from conformance.model_checks import GRAD_NAMES, TRAIN_STEPS, ModelChecksStopped, run_model_checks
from conformance.report import suite_meta, write_json, write_markdown
from reference.adamw import AdamWSettings
from reference.layers import KERNEL_NAMES
from reference.model import PARAM_NAMES, split_params
from tools import conform
from tools.port_example import BUGS
from tools.validate_llmc import STANDIN, build_adapter

EXAMPLE = f"{sys.executable} -m tools.port_example"
CC = os.environ.get("CC", "cc")                      # as tools/validate_llmc.py builds the adapter
needs_cc = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC}) to build a port library")
# kernel shapes for the lib: ports: one token and head; sizes that are not multiples of 8 or 16
KERNEL_SHAPES = (KernelShape(B=1, T=1, C=3, NH=1, OC=5, V=7, Vp=9),
                 KernelShape(B=3, T=5, C=12, NH=3, OC=10, V=20, Vp=24, bias=False))
# The checks each deliberately wrong port fails on fixtures/tiny-bytes, exactly (PORTING.md's table)
GRADS = {f"grad/{dname}" for dname in GRAD_NAMES}
LOSSES = {f"train_loss/{step}" for step in range(TRAIN_STEPS)}
LATER_LOSSES = LOSSES - {"train_loss/0"}             # after the first update
FORWARD_WRONG = {"logits", "loss"} | GRADS | LOSSES
EXAMPLE_BUGS = {                                     # example-port bug flags (cmd:)
    "gelu-constant": FORWARD_WRONG,
    "no-causal-mask": FORWARD_WRONG,
    "layernorm-eps": FORWARD_WRONG,
    "adamw-no-bias-correction": LATER_LOSSES,
    "softmax-padding": FORWARD_WRONG - {"logits"},
}
# the same example ports judged under the bf16 class (their `info` says bf16: --precision bf16), whose
# measured tolerances are 3x a bf16 implementation's errors: looser, and still catching every bug
EXAMPLE_BUGS_BF16 = {
    "gelu-constant": {"grad/dqkvw", "grad/dln2w", "grad/dfcw", "grad/dfcb", "grad/dfcprojw", "grad/dlnfw"},
    "no-causal-mask": {"logits"} | GRADS - {"grad/dln1b", "grad/dlnfb"},
    "layernorm-eps": {"logits"} | GRADS - {"grad/dlnfb"},
    "adamw-no-bias-correction": LOSSES - {"train_loss/0", "train_loss/1", "train_loss/2"},
    "softmax-padding": FORWARD_WRONG - {"logits"},
}
STANDIN_BUGS = {                                     # compile-time bugs of the stand-in (lib:), kernels included
    "STANDIN_BUG_ENCODER_OVERWRITE": {"grad/dwte", "kernel/encoder_backward/dwte", "kernel/encoder_backward/dwpe"}
                                     | LATER_LOSSES,
    "STANDIN_BUG_MATMUL_BACKWARD_OVERWRITE": {"kernel/matmul_backward/dinp"},   # invisible at the model level
    "STANDIN_BUG_ADAMW_NO_BIAS_CORRECTION": LATER_LOSSES,
}


@pytest.fixture(scope="module")
def fixtures():
    return [load_fixture(FIXTURES_DIR / name) for name in COMMITTED_FIXTURES]


@pytest.fixture(scope="module")
def tiny(fixtures):
    return fixtures[0]


def failed_checks(results, fixture_name=None):
    """check names (fixture prefix dropped) that failed"""
    return sorted({r.check.split("/", 1)[1] if r.check.startswith(f"{fixture_name}/") else r.check
                   for r in results if not r.passed})


def kernel_results(backend):
    results = []
    for i, shape in enumerate(KERNEL_SHAPES):
        for name in (n for n in KERNEL_NAMES if backend.has_kernel(n)):
            results += run_kernel_check(backend, name, shape, seed=i)
    return results


def trace(backend, fixture, steps=TRAIN_LOOKAHEAD):
    """Everything a model-level check reads: logits, loss, grads, then `steps` training losses, params, m, v."""
    model = backend.model(fixture.config, fixture.params, fixture.B, fixture.T)
    try:
        out = {"loss": np.float64(model.forward(fixture.x, fixture.y)), "logits": model.logits()}
        model.zero_grad()
        model.backward()
        out["grads"] = model.grads()
        losses, norms = [], []
        for t in range(1, steps + 1):
            losses.append(model.forward(fixture.x, fixture.y))
            model.zero_grad()
            model.backward()
            norms.append(model.update(fixture.optimizer, t))
        out.update(losses=np.array(losses), norms=np.array(norms), params=model.params())
        out["m"], out["v"] = model.optimizer_state()
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
    port = get_backend(f"cmd:{EXAMPLE} --backend reference")
    assert port.port_name == "port_example" and port.port_version
    for fixture in fixtures:
        assert failed_checks(run_model_checks(port, fixture)) == []


def test_cmd_batching_keeps_llmc_semantics(tiny):
    """Patterns other than test_gpt2.c's loop: gradient accumulation, reads between updates,
    set_params, optimizer state, a forward without targets; each against the reference in-process."""
    port, ref = get_backend(f"cmd:{EXAMPLE} --backend reference"), get_backend("reference")
    x, y = tiny.x, tiny.y
    settings = AdamWSettings(learning_rate=1e-3, weight_decay=0.1)

    def script(backend):
        m = backend.model(tiny.config, tiny.params, tiny.B, tiny.T)
        seen = {}
        m.forward(x, y)
        m.zero_grad()
        m.backward()
        m.backward()                                           # accumulates: twice the gradient
        seen["grads2"] = m.grads()
        m.zero_grad()
        m.backward()
        seen["norm1"] = m.update(settings, 1)
        seen["params1"] = m.params()                           # a read between updates
        seen["loss2"] = m.forward(x, y)
        m.zero_grad()
        m.backward()
        seen["norm2"] = m.update(settings, 2)
        seen["loss_no_targets"] = m.forward(x[:, :5])           # no targets, a shorter T
        seen["logits_short"] = m.logits()
        seen["m"], seen["v"] = m.optimizer_state()
        m.set_params(tiny.params)
        seen["loss_reset"] = m.forward(x, y)
        m.zero_grad()
        m.backward()
        seen["grads_reset"] = m.grads()
        m.close()
        return seen

    got, want = script(port), script(ref)
    assert got["loss_no_targets"] is None and want["loss_no_targets"] is None
    # The same numpy code in another process gives the same bits, except where the protocol itself rounds.
    # Losses and grad norms come back as float32 (the reference keeps float64): positive scalars, so one
    # float32 rounding bounds them elementwise (relative 2**-24 ~ 6e-8; rtol 1e-6 leaves room).
    for key in ("loss2", "loss_reset", "norm1", "norm2"):
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
    exact = want.keys() - {"loss_no_targets", "loss2", "loss_reset", "norm1", "norm2", "grads2"}
    for key in exact:
        assert np.array_equal(got[key], want[key]), f"{key} differs from the in-process reference"


@needs_cc
def test_lib_port_with_some_kernels_only(tmp_path):
    """A library exporting one kernel and no model API: that kernel is judged, the rest are absent,
    and the model checks are unsupported (skipped), not errors."""
    source = tmp_path / "residual.c"
    source.write_text("void residual_forward(float* out, float* inp1, float* inp2, int N) {\n"
                      "    for (int i = 0; i < N; i++) out[i] = inp1[i] + inp2[i];\n}\n")
    lib = tmp_path / "libresidual.so"
    subprocess.run([CC, "-O2", "-fPIC", "-shared", str(source), "-o", str(lib)], check=True)
    backend = get_backend(f"lib:{lib}")
    assert [k for k in KERNEL_NAMES if backend.has_kernel(k)] == ["residual_forward"]
    assert "missing encoder_forward" in backend.description
    assert failed_checks(run_kernel_check(backend, "residual_forward", KERNEL_SHAPES[1], seed=0)) == []
    with pytest.raises(ModelChecksStopped, match="no llmc_\\* model API") as stopped:
        run_model_checks(backend, load_fixture(FIXTURES_DIR / COMMITTED_FIXTURES[0]))
    assert stopped.value.results == [] and is_unsupported(stopped.value.cause)
    done = subprocess.run([sys.executable, "-m", "pytest", "conformance/test_model.py", "-q", "-p", "no:cacheprovider",
                           "--backend", f"lib:{lib}", "--fixture", str(FIXTURES_DIR / COMMITTED_FIXTURES[0])],
                          capture_output=True, text=True, cwd=FIXTURES_DIR.parent)
    assert done.returncode == 0 and f"{22 + TRAIN_STEPS} skipped" in done.stdout, done.stdout + done.stderr


# ----------------------------------------------------------------------------- the llm.c adapter
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


def test_standin_adapter_passes(standin_libs, fixtures):
    backend = standin_libs[None]
    assert backend.port_name == "llm.c" and "kernels: all 15" in backend.description
    for fixture in fixtures:
        assert failed_checks(run_model_checks(backend, fixture)) == []
    assert failed_checks(kernel_results(backend)) == []


def test_adapter_turns_llmc_exits_into_errors(standin_libs, tmp_path):
    """llm.c exit()s on these; through the adapter each is an error code. Run in a child process, so a
    regression shows as a failed test instead of a vanished pytest."""
    lib = standin_libs[None].library.path
    bad = tmp_path / "bad.bin"
    bad.write_bytes(np.array([12345, 3] + [0] * 254, "<i4").tobytes())
    code = f"""
import numpy as np
from backends.ports import port_backend
from conformance.fixture import load_fixture
from native.binding import LlmcError
from reference.adamw import AdamWSettings
b = port_backend("lib:{lib}")
f = load_fixture("{FIXTURES_DIR / COMMITTED_FIXTURES[0]}")
def code(fn):
    try:
        fn()
    except LlmcError as e:
        return e.code
    return 0
print("checkpoint", code(lambda: b.model_from_checkpoint("{bad}", 1, 8)))
print("missing", code(lambda: b.model_from_checkpoint("{tmp_path / 'none.bin'}", 1, 8)))
m = b.model(f.config, f.params, f.B, f.T)
print("backward_first", code(m.backward))
print("token", code(lambda: m.forward(np.full((1, 4), f.config.vocab_size, np.int32))))
print("too_long", code(lambda: m.forward(np.zeros((1, f.T + 1), np.int32))))
m.forward(f.x, f.y); m.zero_grad(); m.backward()
print("decay_2d", code(lambda: m.update(AdamWSettings(decay_all=False), 1)))
print("clip", code(lambda: m.update(AdamWSettings(grad_clip=1.0), 1)))
m.forward(f.x[:1, :3], f.y[:1, :3])   # a new B, T: llm.c would exit
print("reshape_loss_ok", m.logits().shape == (1, 3, f.config.padded_vocab_size))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=FIXTURES_DIR.parent)
    assert done.returncode == 0, done.stderr
    codes = dict(line.split() for line in done.stdout.splitlines() if line.split()[0] in (
        "checkpoint", "missing", "backward_first", "token", "too_long", "decay_2d", "clip", "reshape_loss_ok"))
    assert codes == {"checkpoint": "3", "missing": "2", "backward_first": "6", "token": "5", "too_long": "1",
                     "decay_2d": "8", "clip": "8", "reshape_loss_ok": "True"}, done.stdout


# ----------------------------------------------------------------------------- wrong ports are caught
def test_wrong_ports_fail_and_are_named(standin_libs, tiny, tmp_path):
    assert set(EXAMPLE_BUGS) == set(BUGS), "every bug flag of tools/port_example.py is exercised here"
    caught, results, backends = {}, [], {}
    for bug in EXAMPLE_BUGS:
        port = get_backend(f"cmd:{EXAMPLE} --backend reference --bug {bug}")
        got = run_model_checks(port, tiny)
        results += got
        backends[port.name] = port.description
        caught[bug] = failed_checks(got, tiny.name)
    for bug in STANDIN_BUGS:
        backend = standin_libs[bug]
        got = run_model_checks(backend, tiny) + kernel_results(backend)
        results += got
        backends[backend.name] = f"stand-in llm.c built with -D{bug}"
        caught[bug] = failed_checks(got, tiny.name)
    for bug, want in {**EXAMPLE_BUGS, **STANDIN_BUGS}.items():
        assert set(caught[bug]) == want, f"{bug}: caught by {caught[bug]}, expected {sorted(want)}"

    write_json(results, tmp_path / "wrong_ports.json", suite_meta(backends, source="tests/test_ports.py"))
    write_markdown(results, tmp_path / "wrong_ports.md", suite_meta(backends))
    report = json.loads((tmp_path / "wrong_ports.json").read_text())
    assert report["passed"] is False
    for bug in caught:
        print(f"{bug}: caught by {', '.join(caught[bug])}")
    assert "**FAIL**" in (tmp_path / "wrong_ports.md").read_text()


def test_wrong_ports_fail_under_bf16(tiny):
    """The bf16 class is tight enough: each deliberately wrong port still fails, on these checks."""
    assert set(EXAMPLE_BUGS_BF16) == set(BUGS)
    for bug, want in EXAMPLE_BUGS_BF16.items():
        port = get_backend(f"cmd:{EXAMPLE} --backend reference --bug {bug} --precision bf16")
        assert port.precision == "bf16"
        caught = failed_checks(run_model_checks(port, tiny), tiny.name)
        assert set(caught) == want, f"{bug} under bf16: caught by {caught}, expected {sorted(want)}"


# ----------------------------------------------------------------------------- array files
def test_array_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "a.bin"
    arrays = {"x": np.arange(6, dtype=np.int32).reshape(2, 3), "loss": np.float32(1.5),
              "logits": np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)}
    write_arrays(path, arrays)
    back = read_arrays(path)
    assert list(back) == list(arrays)
    for name in arrays:
        assert back[name].dtype == np.asarray(arrays[name]).dtype and np.array_equal(back[name], arrays[name])
    data = path.read_bytes()
    cases = {"magic": b"\0\0\0\0" + data[4:], "truncated": data[:-3], "trailing": data + b"\0",
             "dtype": data[:12 + 4 + 1] + np.array([9], "<i4").tobytes() + data[12 + 4 + 1 + 4:]}
    for field, content in cases.items():
        path.write_bytes(content)
        with pytest.raises(PortError, match=str(path)):
            read_arrays(path)
    with pytest.raises(TypeError, match="float64"):
        write_arrays(path, {"bad": np.zeros(2)})


def test_cmd_port_errors_are_clear(monkeypatch):
    with pytest.raises(BackendUnavailable, match="cannot run"):
        get_backend("cmd:/nonexistent/port")
    with pytest.raises(PortError, match="printed list JSON, expected an object"):
        get_backend(f"cmd:{sys.executable} -c 'print([1])'")
    monkeypatch.setenv("LLMC_PORT_TIMEOUT", "0.5")
    with pytest.raises(PortError, match="ran past LLMC_PORT_TIMEOUT=0.5 s"):
        get_backend(f"cmd:{sys.executable} -c 'import time; time.sleep(10)'")
    monkeypatch.delenv("LLMC_PORT_TIMEOUT")
    with pytest.raises(BackendUnavailable, match="exited with 2"):
        get_backend(f"cmd:{EXAMPLE} --backend cpu --bug gelu-constant")
    with pytest.raises(BackendUnavailable, match="no such shared library"):
        get_backend("lib:/nonexistent/libport.so")


# ----------------------------------------------------------------------------- ports that stop part way
def _port_without_train(tmp_path, exit_status):
    """cmd: the example port, except that `train` exits with exit_status (3: unsupported, 1: a crash)."""
    script = tmp_path / f"no_train_{exit_status}.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(FIXTURES_DIR.parent)!r})\n"
                      "if 'train' in sys.argv:\n    print('this port does not train', file=sys.stderr)\n"
                      f"    sys.exit({exit_status})\n"
                      "from tools.port_example import main\nsys.exit(main())\n")
    return f"cmd:{sys.executable} {script} --backend reference"


def _matrix_cell(markdown, check, column=-1):
    """The support matrix's cell of a check (default: the last backend's column)."""
    row = next(line for line in markdown.read_text().splitlines() if line.startswith(f"| {check} |"))
    return row.strip("| ").split(" | ")[column]


def test_unsupported_training_is_skipped_in_conform(tmp_path, tiny, capsys):
    """Exit 3 on `train`: step 0's checks are judged, the training losses are 'skipped', the run passes."""
    md = tmp_path / "unsupported.md"
    assert conform.main(["--backend", "reference", "--backend", _port_without_train(tmp_path, 3), "--fixture",
                         str(tiny.path), "--report-json", str(tmp_path / "u.json"), "--report-md", str(md)]) == 0
    assert "skipped  (unsupported: port_example: train unsupported: this port does not train" in capsys.readouterr().out
    assert _matrix_cell(md, f"{tiny.name}/loss").startswith("pass")
    assert _matrix_cell(md, f"{tiny.name}/train_loss/0") == "skipped"


def test_crash_in_training_is_an_error_in_conform(tmp_path, tiny, capsys):
    """Exit 1 on `train`: step 0's checks are kept, the run fails, and the matrix says ERROR, not skipped."""
    md = tmp_path / "error.md"
    assert conform.main(["--backend", "reference", "--backend", _port_without_train(tmp_path, 1), "--fixture",
                         str(tiny.path), "--report-json", str(tmp_path / "e.json"), "--report-md", str(md)]) == 1
    assert "ERROR  (PortError:" in capsys.readouterr().out
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["passed"] is False
    assert _matrix_cell(md, f"{tiny.name}/loss").startswith("pass")
    assert _matrix_cell(md, f"{tiny.name}/train_loss/0") == "**ERROR**"


def test_unsupported_training_is_skipped_in_pytest(tmp_path, tiny):
    done = subprocess.run([sys.executable, "-m", "pytest", "conformance/test_model.py", "-q", "-p", "no:cacheprovider",
                           "--backend", _port_without_train(tmp_path, 3), "--fixture", str(tiny.path)],
                          capture_output=True, text=True, cwd=FIXTURES_DIR.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"22 passed, {TRAIN_STEPS} skipped" in done.stdout, done.stdout


# ----------------------------------------------------------------------------- skip / xfail lists
def test_port_list_parsing_and_matching(tmp_path):
    path = tmp_path / "skips.txt"
    path.write_text("# llm.c decays every parameter\n*decay_2d*\n\n"
                    "conformance/test_model.py::test_gradient[dwte-lib:x.so-tiny-bytes]  # padded rows\n"
                    "tiny-bytes/train_loss/?\n")
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
        "def test_gradient(g):\n    assert g != 'dwpe'\n")
    (tmp_path / "skips.txt").write_text("test_gradient[dwte]  # known\n*stale*\n")
    (tmp_path / "xfails.txt").write_text("*test_gradient[dwpe]\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conformance.port_lists", "-p", "no:cacheprovider",
                           "-rsx", "--port-skips", "skips.txt", "--port-xfails", "xfails.txt", "test_x.py"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(FIXTURES_DIR.parent), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped, 1 xfailed" in done.stdout
    assert "skips.txt:1: known" in done.stdout
    assert "'*stale*' matches no collected test" in done.stdout


def test_port_lists_for_conform_results(tiny):
    results = run_model_checks(get_backend("reference"), tiny)
    skips = [port_lists.Entry("*/grad/*", "no grads", "s:1")]
    xfails = [port_lists.Entry("*/loss", "known", "x:1"), port_lists.Entry("*nothing*", "stale", "x:2")]
    kept, notes = port_lists.apply_to_results(results, skips, xfails)
    assert not any("/grad/" in r.check for r in kept)
    loss = next(r for r in kept if r.check.endswith("/loss"))
    assert not loss.passed and "unexpectedly passed" in loss.detail     # the reference passes it
    assert any("'*nothing*' matches no check" in n for n in notes)
