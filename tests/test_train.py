"""tools.train: resume is bit-exact, gradient accumulation is one big batch, the log has llm.c's form,
bad arguments and files give a one-line error with exit status 2 and create nothing.

Tiny models (V=256) on random token files, so every test takes seconds."""

import re

import numpy as np
import pytest

from reference.adamw import LearningRateSchedule
from reference.formats import FormatError, newest_checkpoint, read_trainer_state, write_tokens
from reference.model import GPT2Config
from reference.sampling import Sampler
from tests.badfiles import patch_header, truncate
from tools import train as trainer
from tools.plot_losses import read_log

V = 256
MODEL = f"L2-NH4-C32-V{V}-T32"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """(train path, val path): random ids in [0, V) in llm.c's token format."""
    d = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(7)
    write_tokens(d / "train.bin", rng.integers(0, V, 4000))
    write_tokens(d / "val.bin", rng.integers(0, V, 600))
    return d / "train.bin", d / "val.bin"


def train_argv(train, val, outdir, *extra, backend="reference"):
    """tools.train's arguments for the tiny model on these token files, B=2, T=16."""
    files = ["--train-data", str(train), "--val-data", str(val), "--output-dir", str(outdir)]
    return ["--backend", backend, "--model", MODEL, "-B", "2", "-T", "16", *files, *extra]


def run(data, outdir, *extra, backend="reference"):
    """-> (TrainResult, printed lines)"""
    lines = []
    argv = train_argv(*data, outdir, "--quiet", *extra, backend=backend)
    return trainer.train(trainer.parse_args(argv), out=lines.append), lines


def samples(lines):
    return [line for line in lines if line.startswith("generating:")]


# a schedule that changes every step, clipping that bites, accumulation over 2 micro-batches
SCHEDULE = [
    "--steps",
    "8",
    "--lr",
    "3e-3",
    "--warmup",
    "2",
    "--final-lr-frac",
    "0.1",
    "--grad-clip",
    "0.5",
    "--weight-decay",
    "0.1",
    "--total-batch-size",
    "64",
    "--val-every",
    "3",
    "--val-batches",
    "2",
    "--sample-every",
    "3",
    "--gen-tokens",
    "6",
    "--checkpoint-every",
    "2",
]


@pytest.mark.parametrize("shuffle", ["--shuffle", "--no-shuffle"])
def test_resume_is_bit_exact(data, tmp_path, backend, shuffle):
    """`backend` is conftest's (every --backend, skipped where unavailable); bit-exactness is promised on CPU.
    Shuffled, the resumed run must also continue the loader's permutation and its mt19937."""
    if backend.name not in ("reference", "cpu"):
        pytest.skip(f"bit-exact resume is checked on the CPU backends only, not {backend.name}")
    whole, whole_lines = run(data, tmp_path / "whole", *SCHEDULE, shuffle, backend=backend.name)
    first, _ = run(data, tmp_path / "split", *SCHEDULE, shuffle, "--stop-at", "5", backend=backend.name)
    assert first.last_step == 5 and max(first.train_losses) == 4
    assert newest_checkpoint(tmp_path / "split") == 4
    rest, rest_lines = run(data, tmp_path / "split", *SCHEDULE, shuffle, "--resume", backend=backend.name)
    assert min(rest.train_losses) == 4
    # exact equality: the same floats, not merely close ones
    assert {s: l for s, l in whole.train_losses.items() if s >= 4} == rest.train_losses
    assert {s: l for s, l in whole.val_losses.items() if s >= 4} == rest.val_losses
    assert samples(whole_lines)[-len(samples(rest_lines)) :] == samples(rest_lines)
    # the resumed log is the uninterrupted one: lines from the stopped run past step 4 are dropped
    assert (tmp_path / "split" / "main.log").read_text() == (tmp_path / "whole" / "main.log").read_text()


def test_grad_accumulation_is_one_big_batch(data, tmp_path):
    """B=2 with 2 micro-batches reads the same rows as B=4 in one (llm.c's loader, unshuffled, is
    sequential), so the two runs agree to float32 rounding (the eps and clip rescaling of tools/train.py is
    exact math)."""
    common = [
        "--steps",
        "4",
        "--lr",
        "3e-3",
        "--grad-clip",
        "0.5",
        "--val-every",
        "0",
        "--sample-every",
        "0",
        "--no-shuffle",
    ]
    accum, _ = run(data, tmp_path / "accum", *common, "--total-batch-size", "64")
    lines = []
    argv = train_argv(*data, tmp_path / "big", "--quiet", *common)
    argv[argv.index("-B") + 1] = "4"
    big = trainer.train(trainer.parse_args(argv), out=lines.append)
    losses_accum = np.array(list(accum.train_losses.values()))
    losses_big = np.array(list(big.train_losses.values()))
    np.testing.assert_allclose(losses_accum, losses_big, rtol=1e-5)
    norms = [
        re.search(r"norm:(\S+)", l)[1]
        for l in (tmp_path / d / "main.log" for d in ("accum", "big"))
        for l in l.read_text().splitlines()
        if "trl" in l
    ]
    np.testing.assert_allclose(np.float64(norms[:4]), np.float64(norms[4:]), rtol=1e-3)


def test_log_format(data, tmp_path):
    result, _ = run(data, tmp_path, "--steps", "4", "--val-every", "2", "--val-batches", "1", "--sample-every", "0")
    lines = (tmp_path / "main.log").read_text().splitlines()
    train = [l for l in lines if " trl:" in l]
    val = [l for l in lines if " tel:" in l]
    assert len(train) + len(val) == len(lines)
    assert [int(l.split()[0][2:]) for l in train] == [0, 1, 2, 3]
    assert [int(l.split()[0][2:]) for l in val] == [0, 2, 4]
    for line in train:
        assert re.fullmatch(r"s:\d+ trl:\d+\.\d{6} lr:\S+ norm:\d+\.\d{4}", line), line
    for line in val:
        assert re.fullmatch(r"s:\d+ tel:\d+\.\d{6}", line), line
    assert read_log(tmp_path / "main.log")[0] == pytest.approx(result.train_losses, abs=1e-6)


def test_learning_rate_schedules():
    schedule = LearningRateSchedule(1.0, total_steps=12, warmup=2, final_lr_frac=0.1)
    assert schedule.kind == "cosine"  # tools.train's default too
    assert [schedule.at(s) for s in (0, 1)] == [0.5, 1.0]
    assert schedule.at(2) == pytest.approx(1.0)
    assert schedule.at(7) == pytest.approx(0.55)  # cosine half-way
    assert schedule.at(12) == pytest.approx(0.1)
    schedule.kind = "linear"
    assert schedule.at(7) == pytest.approx(0.55)
    assert schedule.at(4) == pytest.approx(0.82)
    schedule.kind = "constant"
    assert schedule.at(7) == 1.0
    with pytest.raises(ValueError, match="wsd"):
        LearningRateSchedule(1.0, 12, kind="wsd")


def test_sampler_matches_llmc_xorshift():
    """llm.c's random_u32 / random_f32 from seed 1337: values from the same three shifts and multiply
    written in C with uint64_t arithmetic (gcc 12), so Python's 64-bit wrapping is checked too."""
    sampler = Sampler()
    assert [sampler.random_u32() for _ in range(3)] == [989205090, 818269915, 1335155955]
    assert sampler.random_f32() == np.float32(0.902659476)
    assert sampler.state == 3115803837778227132
    probs = np.array([0.25, 0.25, 0.5], np.float32)
    assert [Sampler.sample_mult(probs, c) for c in (0.0, 0.2499, 0.25, 0.49, 0.5, 0.99)] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "argv, names",
    [
        (["-B", "0"], "--batch-size"),
        (["--total-batch-size", "100"], "--total-batch-size"),
        (["--model", "d7x"], "--model"),
        (["--model", "missing.bin"], "missing.bin"),
        (["--train-data", "/nonexistent/train.bin"], "/nonexistent/train.bin"),
        (["--train-data", "/nonexistent/train_*.bin"], "/nonexistent/train_*.bin: no token file matches"),
        (["--val-data", "/nonexistent/val.bin"], "--val-data"),
        (["--backend", "nosuch"], "--backend"),
        (["--resume"], "is not a directory"),
        (["--lr", "abc"], "--lr"),
        (["--schedule", "wsd"], "--schedule"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_creates_nothing(data, tmp_path, capsys, argv, names):
    """Every input is checked before --output-dir is made: a failed start says why in one line and leaves
    nothing behind."""
    assert trainer.main(train_argv(*data, tmp_path / "out" / "run", "--steps", "1", *argv)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train: error:") and names in err, err
    assert not (tmp_path / "out").exists()


def test_resume_without_a_checkpoint_exits_2(data, tmp_path, capsys):
    assert trainer.main(train_argv(*data, tmp_path, "--steps", "1", "--resume")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume" in err, err


def test_bad_token_file_names_the_file_and_creates_nothing(tmp_path, capsys):
    bad = tmp_path / "train.bin"
    bad.write_bytes(b"\0" * 100)
    assert trainer.main(train_argv(bad, bad, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "--train-data" in err and str(bad) in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "damage, field, detail",
    [
        (lambda path: patch_header(path, 0, 20240327), "magic", "header[0] magic is 20240327, expected 20261126"),
        (lambda path: truncate(path, 4), "size", "file is truncated"),
        (lambda path: truncate(path, 10**9), "header", "shorter than the 1024-byte header"),
        (lambda path: patch_header(path, 3, 0), "header[3]", "header[3] B is 0, must be positive"),
        (lambda path: patch_header(path, 5, -2), "header[5]", "header[5] grad_accum is -2, must be positive"),
        (lambda path: patch_header(path, 7, 1), "header[7]", "header[7] is 1, expected 0 (reserved)"),
    ],
)
def test_malformed_state_names_file_and_field(data, tmp_path, capsys, damage, field, detail):
    quiet = ["--steps", "1", "--checkpoint-every", "1", "--val-every", "0", "--sample-every", "0"]
    argv = train_argv(*data, tmp_path, *quiet)
    assert trainer.main(argv) == 0
    path = tmp_path / "state_00000001.bin"
    damage(path)
    with pytest.raises(FormatError) as info:
        read_trainer_state(path, GPT2Config.from_descriptor(MODEL).num_parameters)
    assert info.value.field == field and detail in str(info.value) and str(path) in str(info.value), info.value
    capsys.readouterr()
    assert trainer.main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and detail in err, err


def test_keep_last_deletes_old_checkpoints(data, tmp_path):
    run(
        data,
        tmp_path,
        "--steps",
        "6",
        "--checkpoint-every",
        "2",
        "--keep-last",
        "2",
        "--val-every",
        "0",
        "--sample-every",
        "0",
    )
    names = sorted(p.name for p in tmp_path.iterdir() if p.name[:4] in ("DONE", "mode", "stat"))
    assert names == [
        "DONE_00000004",
        "DONE_00000006",
        "model_00000004.bin",
        "model_00000006.bin",
        "state_00000004.bin",
        "state_00000006.bin",
    ]
    assert newest_checkpoint(tmp_path) == 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The train data of `data` cut into 3 shards (the val split as it is): a glob and its val file."""
    d = tmp_path_factory.mktemp("shards")
    tokens = np.random.default_rng(7).integers(0, V, 4000)
    for k, part in enumerate(np.array_split(tokens, 3)):
        write_tokens(d / f"train_{k:06d}.bin", part)
    write_tokens(d / "val.bin", np.random.default_rng(8).integers(0, V, 600))
    return str(d / "train_*.bin"), d / "val.bin"


def test_rank_and_world_size_from_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = trainer.parse_args(["-B", "2", "-T", "16"])
    assert (args.rank, args.world_size, args.total_batch_size) == (1, 2, 64)
    args = trainer.parse_args(["--rank", "0", "--world-size", "1"])  # an option overrides the environment
    assert (args.rank, args.world_size) == (0, 1)
    with pytest.raises(trainer.UsageError, match=r"--rank: 2 is outside \[0, world size 2\)"):
        trainer.parse_args(["--rank", "2"])
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(trainer.UsageError, match=r"RANK=2, WORLD_SIZE=2: need 0 <= rank < world size"):
        trainer.parse_args([])
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(trainer.UsageError, match="RANK='x' is not an integer"):
        trainer.parse_args([])


def test_sharded_ranks_resume_and_refuse_other_data_settings(shards, tmp_path, capsys):
    """Two ranks over a glob of shards, shuffled: each resumes its own run bit for bit; a resume with
    another rank, world size or shuffle setting is refused, naming the state file."""
    whole = {}
    for rank in (0, 1):
        argv = [
            "--backend",
            "reference",
            "--model",
            MODEL,
            "--train-data",
            shards[0],
            "--val-data",
            str(shards[1]),
            "-B",
            "2",
            "-T",
            "16",
            "--world-size",
            "2",
            "--rank",
            str(rank),
            "--steps",
            "6",
            "--val-every",
            "0",
            "--sample-every",
            "0",
            "--checkpoint-every",
            "2",
            "--quiet",
        ]
        whole[rank] = trainer.train(
            trainer.parse_args(argv + ["--output-dir", str(tmp_path / f"whole{rank}")]), out=lambda line: None
        ).train_losses
        split = str(tmp_path / f"split{rank}")
        trainer.train(trainer.parse_args(argv + ["--output-dir", split, "--stop-at", "3"]), out=lambda line: None)
        for other in (["--rank", str(1 - rank)], ["--world-size", "1", "--rank", "0"], ["--no-shuffle"]):
            assert trainer.main(argv + ["--output-dir", split, "--resume"] + other) == 2
            err = capsys.readouterr().err
            assert "state_00000002.bin" in err and "(process_rank, num_processes, shuffle, num_shards)" in err, err
        rest = trainer.train(trainer.parse_args(argv + ["--output-dir", split, "--resume"]), out=lambda line: None)
        assert rest.train_losses == {s: loss for s, loss in whole[rank].items() if s >= 2}
    assert all(whole[0][s] != whole[1][s] for s in whole[0])  # the two ranks train on different tokens


def test_launched_ranks_need_a_backend_that_averages(data, tmp_path, monkeypatch):
    """Started by a launcher (RANK / WORLD_SIZE set), the ranks train one model: a backend that cannot join a
    data-parallel group is refused with the reason, before anything is written."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(trainer.UsageError, match="cannot average gradients over 2 processes"):
        run(data, tmp_path / "out", "--steps", "1")
    assert not (tmp_path / "out").exists()
