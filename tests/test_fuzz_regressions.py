"""Regression tests of the defects fuzzing found in the Python side (issue 9, section 3); the C library's
are in test_native.py.

- tools.make_fixtures failed for 256 < V < 50257 (uint8 % V overflowed);
- kill -9 during a write left atomic_write's hidden temporary files behind for good;
- a missing fixture file gave a bare "[Errno 2]" that said neither what the file is nor how to make it.
"""

import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from conformance import fixture as fixture_module
from conformance.fixture import CHECKPOINT, COMMITTED_FIXTURES, DEBUG_STATE, FIXTURES_DIR, MANIFEST, load_fixture
from reference.formats import atomic_write
from reference.model import GPT2Config
from tools.make_fixtures import batch_tokens, make_fixture
from tools.prepare_data import TINYSHAKESPEARE_TEXT

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- make_fixtures, any V
@pytest.mark.parametrize("V", [255, 256, 300, 1000, 50000])
def test_batch_tokens_for_vocabularies_beyond_a_byte(V):
    config = GPT2Config.from_descriptor(f"L1-NH2-C32-V{V}-T32")
    tokens, source = batch_tokens(config, 2, 8)
    text = np.frombuffer(TINYSHAKESPEARE_TEXT.read_bytes()[:17], np.uint8)
    np.testing.assert_array_equal(tokens, text.astype(np.int32) % V)  # the ASCII bytes themselves here
    assert tokens.dtype == np.int32 and f"b % {V}" in source


def test_make_fixture_with_vocab_300(tmp_path):
    """The reported case: `--model L1-NH2-C32-V300-T32` raised OverflowError."""
    manifest = make_fixture(tmp_path / "v300", "L1-NH2-C32-V300-T32", B=1, T=8)
    assert manifest["config"]["vocab_size"] == 300
    loaded = load_fixture(tmp_path / "v300")
    assert loaded.config.vocab_size == 300 and loaded.x.max() < 300
    assert np.isfinite(loaded.expected_losses).all()


# ----------------------------------------------------------------------------- atomic_write after kill -9
WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from reference.formats import atomic_write
with atomic_write({target!r}) as f:
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(600)
"""


def start_writer(target):
    """A process inside atomic_write(target), stopped mid-write; -> (process, its temporary file)."""
    before = set(os.listdir(target.parent))
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(root=str(ROOT), target=str(target))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    (tmp,) = set(os.listdir(target.parent)) - before
    assert tmp.startswith(f".{target.name}.{proc.pid}.") and tmp.endswith(".tmp"), tmp
    return proc, target.parent / tmp


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()  # reaped: a zombie still answers kill(pid, 0)
    proc.stdout.close()


def test_atomic_write_removes_temporaries_of_killed_writers(tmp_path):
    target = tmp_path / "model.bin"
    proc, stale = start_writer(target)
    kill(proc)
    assert stale.exists() and not target.exists()  # what kill -9 leaves
    with atomic_write(target) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert sorted(os.listdir(tmp_path)) == ["model.bin"], "the dead writer's temporary file must be gone"


def test_atomic_write_keeps_temporaries_of_live_writers_and_other_files(tmp_path):
    target = tmp_path / "model.bin"
    proc, live = start_writer(target)
    others = [
        tmp_path / name
        for name in (
            ".model.bin.5.tmp",
            ".model.bin.x.0123456789ab.tmp",
            ".model.bin.extra.999999.0123456789ab.tmp",
            ".other.bin.1.0123456789ab.tmp",
        )
    ]
    for path in others:
        path.write_bytes(b"")
    try:
        with atomic_write(target) as f:
            f.write(b"whole")
        assert live.exists(), "a running writer's temporary file was removed"
        assert all(path.exists() for path in others), "a file not matching .NAME.PID.RANDOM.tmp was removed"
    finally:
        kill(proc)


# ----------------------------------------------------------------------------- missing fixture files
@pytest.fixture
def fixture_copy(tmp_path):
    """A copy of a committed fixture directory, outside fixtures/."""
    copy = tmp_path / "fixture"
    shutil.copytree(FIXTURES_DIR / COMMITTED_FIXTURES[0], copy)
    return copy


@pytest.mark.parametrize("name, role", [(CHECKPOINT, "model checkpoint"), (DEBUG_STATE, "debug state")])
@pytest.mark.parametrize("with_manifest", [True, False])
def test_missing_fixture_file_is_named_and_explained(fixture_copy, name, role, with_manifest):
    (fixture_copy / name).unlink()
    if not with_manifest:
        (fixture_copy / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_fixture(fixture_copy)
    message = str(info.value)
    assert "Errno" not in message
    for words in (str(fixture_copy / name), role, "missing", "python -m tools.make_fixtures"):
        assert words in message, f"{words!r} missing from: {message}"
    assert ("listed in" in message) == with_manifest


def test_missing_124m_fixture_says_make_fixtures(fixture_copy, monkeypatch):
    monkeypatch.setattr(fixture_module, "GPT2_124M_FIXTURE", fixture_copy)
    (fixture_copy / CHECKPOINT).unlink()
    with pytest.raises(FileNotFoundError, match="run `make fixtures`"):
        load_fixture(fixture_copy)
    monkeypatch.setattr(fixture_module, "GPT2_124M_FIXTURE", fixture_copy / "absent")
    with pytest.raises(FileNotFoundError, match="no such fixture directory; run `make fixtures`"):
        load_fixture(fixture_copy / "absent")


def test_missing_committed_fixture_file_says_git_checkout(tmp_path, monkeypatch):
    fixtures = tmp_path / "fixtures"
    shutil.copytree(FIXTURES_DIR / COMMITTED_FIXTURES[0], fixtures / COMMITTED_FIXTURES[0])
    monkeypatch.setattr(fixture_module, "FIXTURES_DIR", fixtures)
    (fixtures / COMMITTED_FIXTURES[0] / DEBUG_STATE).unlink()
    with pytest.raises(FileNotFoundError, match=f"git checkout -- fixtures/{COMMITTED_FIXTURES[0]}"):
        load_fixture(fixtures / COMMITTED_FIXTURES[0])


def test_make_fixtures_cli_for_vocab_300(tmp_path):
    """The command line of the report, end to end."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.make_fixtures",
            "--model",
            "L1-NH2-C32-V300-T32",
            "-B",
            "1",
            "-T",
            "8",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / MANIFEST).exists()
    assert done.stdout.startswith(f"{tmp_path / 'out'}: L1-NH2-C32-V300-T32")
