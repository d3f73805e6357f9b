"""A fixture directory in llm.c's test_gpt2 layout, loaded and checked.

Two kinds of directory:
- ours (tools/make_fixtures.py): manifest.json lists every file's sha256 and size (verified here) and
  the 10 expected losses of test_gpt2.c's loop.
- llm.c's own (train_gpt2.py output: gpt2_124M.bin + gpt2_124M_debug_state.bin, no manifest): the
  expected losses are computed by reference/oracle.py in float64 on first use, and losses_source says so.
"""
import functools
import json
from pathlib import Path

import numpy as np

from reference.adamw import AdamWSettings, TEST_GPT2_SETTINGS
from reference.formats import FormatError, read_checkpoint, read_debug_state, sha256_file
from reference.oracle import expected_outputs
from reference.model import GPT2Config

CHECKPOINT, CHECKPOINT_BF16, DEBUG_STATE = "gpt2_124M.bin", "gpt2_124M_bf16.bin", "gpt2_124M_debug_state.bin"
MANIFEST = "manifest.json"
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
COMMITTED_FIXTURES = ("tiny-bytes", "tiny-gpt2")
GPT2_124M_FIXTURE = FIXTURES_DIR / "gpt2_124M"   # made by `make fixtures`, ignored by git

LOSSES_FROM_MANIFEST = "manifest"
LOSSES_FROM_ORACLE = "oracle (float64)"


class Fixture:
    """config, params (flat float32 as stored in the fp32 checkpoint), B, T, x and y ((B,T) int32),
    logits ((B,T,V) float32), loss, grads (flat float32), expected_losses (10 floats, test_gpt2.c's loop),
    losses_source, optimizer (AdamWSettings of that loop), manifest (dict or None), name, path and the
    paths of its files (checkpoint_path, bf16_checkpoint_path or None, debug_state_path)."""

    def __init__(self, path, config, params, state, manifest):
        self.path = Path(path)
        self.name = self.path.name
        self.config, self.params, self.manifest = config, params, manifest
        self.B, self.T = state.B, state.T
        self.x, self.y = state.x, state.y
        self.logits, self.loss, self.grads = state.logits, state.loss, state.grads
        self.checkpoint_path = self.path / CHECKPOINT
        bf16 = self.path / CHECKPOINT_BF16
        self.bf16_checkpoint_path = bf16 if bf16.exists() else None
        self.debug_state_path = self.path / DEBUG_STATE
        self.optimizer = AdamWSettings(**(manifest["optimizer"] if manifest else TEST_GPT2_SETTINGS))
        self.losses_source = LOSSES_FROM_MANIFEST if manifest else LOSSES_FROM_ORACLE

    @functools.cached_property
    def expected_losses(self):
        if self.manifest:
            return np.array(self.manifest["expected"]["losses"], np.float64)
        # float64 d12 training takes minutes, hence computed only when asked for
        outputs = expected_outputs(self.config, self.params, self.x, self.y, settings=self.optimizer)
        return np.array(outputs.losses, np.float64)

    def __repr__(self):
        return f"Fixture({self.name!r}, B={self.B}, T={self.T}, {self.config}, losses from {self.losses_source})"


def _load_manifest(path):
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(path, "json", f"is not valid JSON: {e}") from e
    for key in ("config", "files", "expected", "optimizer", "B", "T"):
        if key not in manifest:
            raise FormatError(path, key, f"has no {key!r} entry")
    return manifest


def _verify_files(dirpath, manifest_path, manifest):
    for name, entry in manifest["files"].items():
        path = dirpath / name
        if not path.exists():
            raise FormatError(path, "missing", f"is listed in {manifest_path} but does not exist")
        size = path.stat().st_size
        if size != entry["size"]:
            raise FormatError(path, "size", f"is {size} bytes, {manifest_path} says {entry['size']}")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise FormatError(path, "sha256", f"sha256 is {digest}, {manifest_path} says {entry['sha256']}")


def load_fixture(dirpath, verify=True):
    """-> Fixture. verify: check every file listed in manifest.json against its size and sha256."""
    dirpath = Path(dirpath)
    if not dirpath.is_dir():
        raise FileNotFoundError(f"{dirpath}: no such fixture directory")
    manifest_path = dirpath / MANIFEST
    manifest = _load_manifest(manifest_path) if manifest_path.exists() else None
    if manifest and verify:
        _verify_files(dirpath, manifest_path, manifest)
    config, params = read_checkpoint(dirpath / CHECKPOINT)
    if manifest and GPT2Config(**manifest["config"]) != config:
        raise FormatError(dirpath / CHECKPOINT, "config", f"header config {config} differs from {manifest_path}'s "
                                                           f"{manifest['config']}")
    state = read_debug_state(dirpath / DEBUG_STATE, config)
    if manifest and (state.B, state.T) != (manifest["B"], manifest["T"]):
        raise FormatError(dirpath / DEBUG_STATE, "header[2]", f"B={state.B}, T={state.T} differ from "
                                                              f"{manifest_path}'s B={manifest['B']}, T={manifest['T']}")
    return Fixture(dirpath, config, params, state, manifest)


def default_fixture_dirs():
    """The committed fixture directories, then fixtures/gpt2_124M where it has been generated."""
    dirs = [FIXTURES_DIR / name for name in COMMITTED_FIXTURES]
    if (GPT2_124M_FIXTURE / CHECKPOINT).exists():
        dirs.append(GPT2_124M_FIXTURE)
    return dirs
