"""tools.fuzz: a short run over every target is clean, and the harness does report what it exists to find
(a crash, a hang, a C loader that disagrees with the Python reader), with a case that reproduces."""

from pathlib import Path
import re
import subprocess
import sys

import pytest

from native.binding import library_path
from tools import fuzz

ROOT = Path(__file__).resolve().parent.parent
SHORT_RUN_SECONDS = 20

pytestmark = pytest.mark.skipif(not library_path("cpu").is_file(), reason="build/libllmc_cpu.so not built: run make")


def run_fuzz(*args, timeout=300):
    done = subprocess.run(
        [sys.executable, "-m", "tools.fuzz", *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )
    return done.returncode, done.stdout + done.stderr


def summary_rows(output):
    """{target: (cases, accepted, rejected, failed)} from the summary table."""
    rows = {}
    for line in output.splitlines():
        m = re.fullmatch(r"(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", line.strip())
        if m and m[1] in fuzz.TARGETS + fuzz.SELFTEST_TARGETS:
            rows[m[1]] = tuple(int(x) for x in m.groups()[1:])
    return rows


def test_short_run_is_clean():
    rc, output = run_fuzz("--seconds", str(SHORT_RUN_SECONDS), "--seed", "1")
    assert rc == 0, output
    rows = summary_rows(output)
    assert set(rows) == set(fuzz.TARGETS), output
    for target, (cases, accepted, rejected, failed) in rows.items():
        assert cases >= 10 and failed == 0 and accepted + rejected == cases, f"{target}: {output}"
    for target in fuzz.FILE_TARGETS + ("abi-config", "abi-update", "abi-kernels"):
        accepted, rejected = rows[target][1:3]
        assert accepted and rejected, f"{target}: a mutator that never (or always) breaks the file tests little"


@pytest.mark.parametrize(
    "target, how",
    [("selftest-crash", r"crashed \(killed by SIGSEGV\)"), ("selftest-hang", r"hung \(no answer within 2 s\)")],
)
def test_crash_and_hang_are_reported_with_the_case(target, how):
    rc, output = run_fuzz("--target", target, "--seconds", "1", "--timeout", "2", "--seed", "7")
    assert rc == 1, output
    assert re.search(f"FAILED {target} case 0 \\(seed 7\\): the worker {how}; it does again alone", output), output
    assert f"reproduce: python -m tools.fuzz --seed 7 --case {target}:0" in output
    cases, accepted, rejected, failed = summary_rows(output)[target]
    assert cases >= 1 and failed == cases and accepted == rejected == 0


def test_one_case_alone():
    rc, output = run_fuzz("--seed", "3", "--case", "checkpoint-v3:5", "--case", "abi-update:2")
    assert rc == 0, output
    assert {t: row[0] for t, row in summary_rows(output).items()} == {"checkpoint-v3": 1, "abi-update": 1}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """The worker's cases, in this process."""
    return fuzz.Worker(tmp_path_factory.mktemp("fuzz"))


def test_cases_are_reproducible(worker):
    for target in ("checkpoint-v5", "arrays", "abi-forward", "abi-kernels"):
        first, second = worker.run(target, 11, 4), worker.run(target, 11, 4)
        assert first == second and first["mutations"], target
    assert worker.run("tokens", 11, 4)["mutations"] != worker.run("tokens", 11, 5)["mutations"]


def test_disagreement_between_c_and_python_fails(worker, monkeypatch):
    """A Python reader that accepted everything would disagree with the C loader on the first bad file."""
    from reference import formats

    real = formats.read_checkpoint
    monkeypatch.setattr(formats, "read_checkpoint", lambda path: real(worker.dir / "base-checkpoint-v3"))
    answers = [worker.run("checkpoint-v3", 0, i) for i in range(30)]
    failed = [a for a in answers if a["verdict"] == "failed"]
    assert failed, "30 mutated files, none rejected by the C loader?"
    assert any("the C loader rejected what read_checkpoint accepted" in a["failure"] for a in failed)
    assert all(
        "the C loader rejected what read_checkpoint accepted" in a["failure"]
        or "read different parameter values" in a["failure"]
        for a in failed
    ), failed
