"""Write a fixture directory in llm.c's test_gpt2 layout, plus a manifest.

    python -m tools.make_fixtures --model DESCRIPTOR -B 4 -T 64 [--seed 42] OUTDIR
    python -m tools.make_fixtures --committed      # regenerate fixtures/tiny-bytes and fixtures/tiny-gpt2

OUTDIR gets, whatever the model (so llm.c's own test_gpt2 can read any fixture directory):
  gpt2_124M.bin               the randomly initialized model (reference.model.init_params), v3 fp32
  gpt2_124M_bf16.bin          the same model rounded to bf16 (v5)
  gpt2_124M_debug_state.bin   batch x, y and the fp32 model's step-0 logits, loss and gradients
  manifest.json               what the model really is, the batch source, the optimizer, the 10 expected
                              losses of test_gpt2.c's loop, and the sha256 and size of every file
  trajectories.npz            for a model too large to train in float64 in a test session (over
                              TRAJECTORIES_FROM parameters): the float64 trajectory of test_gpt2.c's loop in both
                              AdamW conventions the model checks judge (conformance/model_checks.py), at a
                              fixed sample of positions per tensor. Smaller fixtures compute theirs on demand.
Expected values are computed in float64 by reference/oracle.py from the fp32 parameters and stored as fp32.

    python -m tools.make_fixtures --trajectories DIR   # (re)write DIR/trajectories.npz of an existing fixture

The batch is the first B*T+1 tokens of tiny Shakespeare: for a model with GPT-2's vocabulary, the
tiny_shakespeare_val.bin split (tools/prepare_data.py, as llm.c's train_gpt2.py uses); for a smaller
vocabulary V, the UTF-8 bytes of reference/data/tinyshakespeare.txt, byte b becoming id b % V (the text
is ASCII, so for V >= 128 the ids are the bytes themselves).
"""

import argparse
from dataclasses import asdict
import json
from pathlib import Path
import platform
import time

import numpy as np

from conformance.fixture import load_fixture, write_trajectories
from conformance.model_checks import CONVENTIONS, TRAIN_STEPS, convention_settings
from reference.adamw import TEST_GPT2_SETTINGS, AdamWSettings
from reference.formats import (
    MODEL_MAGIC,
    STATE_MAGIC,
    STATE_VERSION,
    atomic_write,
    check_tokens,
    read_tokens,
    sha256_file,
    write_checkpoint,
    write_debug_state,
)
from reference.model import GPT2_VOCAB, GPT2Config, init_params
from reference.oracle import ExpectedOutputs, expected_outputs, expected_trajectory, trajectory_index
from tools.prepare_data import TINYSHAKESPEARE_TEXT, ensure_tinyshakespeare

GENERATOR_VERSION = 1
STEPS = 10  # test_gpt2.c's training loop
CHECKPOINT, CHECKPOINT_BF16, DEBUG_STATE = "gpt2_124M.bin", "gpt2_124M_bf16.bin", "gpt2_124M_debug_state.bin"
MANIFEST = "manifest.json"
FILE_FORMATS = {
    CHECKPOINT: {"format": "llm.c model checkpoint", "magic": MODEL_MAGIC, "version": 3, "dtype": "fp32"},
    CHECKPOINT_BF16: {"format": "llm.c model checkpoint", "magic": MODEL_MAGIC, "version": 5, "dtype": "bf16"},
    DEBUG_STATE: {"format": "llm.c debug state", "magic": STATE_MAGIC, "version": STATE_VERSION},
}

TRAJECTORIES_FROM = 1 << 24  # parameters: d12 takes minutes per convention in float64, the tiny ones seconds
REPO_ROOT = Path(__file__).resolve().parents[1]
COMMITTED = {  # name -> make_fixture arguments; each file < 4 MB
    "tiny-bytes": dict(descriptor="L2-NH4-C64-V200-T64", B=4, T=32),
    "tiny-gpt2": dict(descriptor="L1-NH2-C8-T16", B=1, T=8),
}


def batch_tokens(config, B, T):
    """-> (B*T+1 token ids as int32, a sentence saying where they came from)."""
    n = B * T + 1
    if config.vocab_size >= GPT2_VOCAB:
        path, _ = ensure_tinyshakespeare()
        tokens = read_tokens(path)[:n].astype(np.int32)
        source = f"tiny_shakespeare_val.bin (tools/prepare_data.py): its first {n} GPT-2 tokens"
    else:
        path = TINYSHAKESPEARE_TEXT
        text = np.frombuffer(path.read_bytes()[:n], np.uint8).astype(np.int32)  # V may exceed uint8's range
        tokens = text % config.vocab_size
        source = (
            f"reference/data/tinyshakespeare.txt: its first {n} UTF-8 bytes, byte b as token id b % {config.vocab_size}"
        )
    check_tokens(tokens, config.vocab_size, path, B, T)
    return tokens, source


def make_fixture(outdir, descriptor, B, T, seed=42):
    """Writes the fixture files and manifest.json into outdir; -> the manifest (a dict)."""
    config = GPT2Config.from_descriptor(descriptor)
    if not 0 < T <= config.max_seq_len or B <= 0:
        raise ValueError(f"B={B}, T={T}: need B >= 1 and 1 <= T <= max_seq_len={config.max_seq_len}")
    params = init_params(config, seed, np.float32)
    tokens, batch_source = batch_tokens(config, B, T)
    x, y = tokens[:-1].reshape(B, T), tokens[1:].reshape(B, T)
    trajectories = {}
    if config.num_parameters > TRAJECTORIES_FROM:  # the first convention's run gives the expected outputs too
        first = {}
        trajectories["train"] = timed(
            outdir,
            "train",
            expected_trajectory,
            config,
            params,
            x,
            y,
            AdamWSettings(**TEST_GPT2_SETTINGS),
            STEPS,
            trajectory_index(config),
            first,
        )
        expected = ExpectedOutputs(
            first["logits"], first["loss"], first["grads"], list(trajectories["train"].losses[:STEPS])
        )
    else:
        expected = expected_outputs(config, params, x, y, steps=STEPS, settings=TEST_GPT2_SETTINGS)

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    write_checkpoint(outdir / CHECKPOINT, config, params, "fp32")
    write_checkpoint(outdir / CHECKPOINT_BF16, config, params, "bf16")
    write_debug_state(
        outdir / DEBUG_STATE,
        x,
        y,
        expected.logits.astype(np.float32),
        np.float32(expected.loss),
        expected.grads.astype(np.float32),
    )

    manifest = {
        "generator": "tools.make_fixtures",
        "generator_version": GENERATOR_VERSION,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "descriptor": descriptor,
        "config": asdict(config),
        "num_parameters": config.num_parameters,
        "seed": seed,
        "init": "reference.model.init_params(config, seed, float32)",
        "B": B,
        "T": T,
        "batch_source": batch_source,
        "optimizer": dict(TEST_GPT2_SETTINGS),
        "steps": STEPS,
        "expected": {
            "computed_in": "float64 (reference/oracle.py) from the fp32 checkpoint's parameters, stored as fp32",
            "loss": float(np.float32(expected.loss)),
            "losses": [float(np.float32(loss)) for loss in expected.losses],
        },
        "files": {
            name: {**fmt, "size": (outdir / name).stat().st_size, "sha256": sha256_file(outdir / name)}
            for name, fmt in FILE_FORMATS.items()
        },
    }
    with atomic_write(outdir / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    if trajectories:
        make_trajectories(outdir, trajectories)
    return manifest


def timed(fixture_dir, name, compute, *args):
    start = time.perf_counter()
    result = compute(*args)
    print(f"{fixture_dir}: trajectory {name} in {time.perf_counter() - start:.1f} s", flush=True)
    return result


def make_trajectories(fixture_dir, done=None):
    """Compute and write fixture_dir/trajectories.npz: the float64 trajectories of both AdamW conventions
    (done: those already computed, by name)."""
    fixture = load_fixture(fixture_dir)
    index = trajectory_index(fixture.config)
    trajectories = dict(done or {})
    for name in CONVENTIONS:
        if name not in trajectories:
            trajectories[name] = timed(
                fixture_dir,
                name,
                expected_trajectory,
                fixture.config,
                fixture.params,
                fixture.x,
                fixture.y,
                convention_settings(fixture, name),
                TRAIN_STEPS,
                index,
            )
    write_trajectories(fixture, trajectories)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="d12 or L<layers>-NH<heads>-C<channels>[-V<vocab>][-T<max_seq_len>]")
    parser.add_argument("-B", type=int, default=4)
    parser.add_argument("-T", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--committed", action="store_true", help="regenerate the fixtures committed under fixtures/")
    parser.add_argument("--trajectories", metavar="DIR", help="(re)write DIR/trajectories.npz of an existing fixture")
    parser.add_argument("outdir", nargs="?")
    args = parser.parse_args(argv)
    if args.trajectories:
        make_trajectories(Path(args.trajectories))
        return
    if args.committed:
        jobs = [(REPO_ROOT / "fixtures" / name, dict(kwargs, seed=42)) for name, kwargs in COMMITTED.items()]
    elif args.model and args.outdir:
        jobs = [(Path(args.outdir), dict(descriptor=args.model, B=args.B, T=args.T, seed=args.seed))]
    else:
        parser.error("give --model and OUTDIR, or --committed")
    for outdir, kwargs in jobs:
        start = time.perf_counter()
        manifest = make_fixture(outdir, **kwargs)
        sizes = ", ".join(f"{name} {f['size']:,} B" for name, f in manifest["files"].items())
        print(
            f"{outdir}: {kwargs['descriptor']} B={kwargs['B']} T={kwargs['T']} in "
            f"{time.perf_counter() - start:.1f} s; {sizes}"
        )
        print(f"  expected losses: {' '.join(f'{loss:.6f}' for loss in manifest['expected']['losses'])}")


if __name__ == "__main__":
    main()
