"""A fixture directory in llm.c's test_gpt2 layout, loaded and checked.

Two kinds of directory:
- ours (tools/make_fixtures.py): manifest.json lists every file's sha256 and size (verified here) and
  the 10 expected losses of test_gpt2.c's loop.
- llm.c's own (train_gpt2.py output: gpt2_124M.bin + gpt2_124M_debug_state.bin, no manifest): the
  expected losses are computed by reference/oracle.py in float64 on first use, and losses_source says so.

The float64 training trajectories the model checks judge every update against (Fixture.trajectory:
reference.oracle.expected_trajectory, in each AdamW convention) come from the directory's
trajectories.npz where tools.make_fixtures wrote one (the 124M fixture: minutes of float64 work per
convention), else they are computed on first use and kept for the process (seconds for the committed
tiny fixtures).
"""

import dataclasses
import functools
import json
import math
from pathlib import Path
import sys

import numpy as np

from conformance.model_checks import TRAIN_STEPS
from reference.adamw import TEST_GPT2_SETTINGS, AdamWSettings
from reference.formats import FormatError, atomic_write, read_checkpoint, read_debug_state, sha256_file
from reference.model import GPT2Config
from reference.oracle import Trajectory, expected_trajectory, trajectory_index

CHECKPOINT, CHECKPOINT_BF16, DEBUG_STATE = "gpt2_124M.bin", "gpt2_124M_bf16.bin", "gpt2_124M_debug_state.bin"
MANIFEST = "manifest.json"
TRAJECTORIES = "trajectories.npz"  # the stored float64 trajectories (tools.make_fixtures --trajectories)
TRAJECTORIES_VERSION = 1
FIXTURES_DIR = Path(__file__).resolve().parents[1] / "fixtures"
COMMITTED_FIXTURES = ("tiny-bytes", "tiny-gpt2")
GPT2_124M_FIXTURE = FIXTURES_DIR / "gpt2_124M"  # made by `make fixtures`, ignored by git

CONFIG_KEYS = tuple(field.name for field in dataclasses.fields(GPT2Config))
OPTIMIZER_KEYS = tuple(field.name for field in dataclasses.fields(AdamWSettings))

FIXTURE_OPTION_HELP = (
    "fixture directory in llm.c's layout (repeatable); default: the committed fixtures "
    "and fixtures/gpt2_124M where it exists"
)

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
        # float64 d12 training takes minutes, hence computed only when asked for (the trajectory the checks
        # after every update need anyway)
        return self.trajectory("train", self.optimizer).losses[:TRAIN_STEPS].copy()

    def trajectory(self, name, settings):
        """The float64 Trajectory of test_gpt2.c's loop under `settings` (reference/oracle.py), `name` being
        the convention's: from trajectories.npz when it holds that one, else computed once per process."""
        key = (
            str(self.path.resolve()),
            _file_stamp(self.checkpoint_path),
            _file_stamp(self.debug_state_path),
            name,
            dataclasses.astuple(settings),
        )
        if key not in _TRAJECTORIES:
            stored = read_trajectories(self).get(name)
            if stored is not None and stored.settings != settings:
                raise FormatError(
                    self.path / TRAJECTORIES,
                    name,
                    f"{name} was computed with {stored.settings}, "
                    f"the checks use {settings}: {REGENERATE_TRAJECTORIES.format(dir=self.path)}",
                )
            index = trajectory_index(self.config)
            if stored is None and index is not None:  # a large model: minutes of float64 work
                print(
                    f"{self.path}: computing the float64 trajectory {name} (minutes for a model this size; "
                    f"`python -m tools.make_fixtures --trajectories {self.path}` stores it)",
                    file=sys.stderr,
                )
            _TRAJECTORIES[key] = stored or expected_trajectory(
                self.config, self.params, self.x, self.y, settings, TRAIN_STEPS, index
            )
        return _TRAJECTORIES[key]

    def __repr__(self):
        return f"Fixture({self.name!r}, B={self.B}, T={self.T}, {self.config}, losses from {self.losses_source})"


_TRAJECTORIES = {}
REGENERATE_TRAJECTORIES = "regenerate it with `python -m tools.make_fixtures --trajectories {dir}`"


def _file_stamp(path):
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _checkpoint_sha256(fixture):
    if fixture.manifest:
        return fixture.manifest["files"][CHECKPOINT]["sha256"]
    return sha256_file(fixture.checkpoint_path)


def write_trajectories(fixture, trajectories):
    """{name: Trajectory} -> the fixture's trajectories.npz (atomically), tied to its checkpoint and batch."""
    arrays = {
        "version": np.array(TRAJECTORIES_VERSION),
        "checkpoint_sha256": np.array(_checkpoint_sha256(fixture)),
        "x": fixture.x,
        "y": fixture.y,
    }
    for name, t in trajectories.items():
        arrays[f"{name}.settings"] = np.array(json.dumps(dataclasses.asdict(t.settings)))
        arrays[f"{name}.index"] = np.array([], np.int64) if t.index is None else t.index
        for field in ("losses", "grad_norms", "params", "m", "v"):
            arrays[f"{name}.{field}"] = getattr(t, field)
    with atomic_write(fixture.path / TRAJECTORIES) as f:
        np.savez(f, **arrays)


def read_trajectories(fixture):
    """The fixture's trajectories.npz -> {name: Trajectory} ({} where there is none); FormatError when it
    belongs to another checkpoint or batch."""
    path = fixture.path / TRAJECTORIES
    if not path.exists():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as e:
        raise FormatError(path, "npz", f"is not a readable trajectories file: {e}") from e
    if int(arrays.get("version", -1)) != TRAJECTORIES_VERSION:
        raise FormatError(
            path,
            "version",
            f"version {arrays.get('version')}, expected {TRAJECTORIES_VERSION}: "
            + REGENERATE_TRAJECTORIES.format(dir=fixture.path),
        )
    if str(arrays["checkpoint_sha256"]) != _checkpoint_sha256(fixture) or not (
        np.array_equal(arrays["x"], fixture.x) and np.array_equal(arrays["y"], fixture.y)
    ):
        raise FormatError(
            path,
            "checkpoint_sha256",
            f"was computed from another checkpoint or batch than "
            f"{fixture.checkpoint_path}'s: " + REGENERATE_TRAJECTORIES.format(dir=fixture.path),
        )
    trajectories = {}
    for name in {key.split(".")[0] for key in arrays if key.endswith(".settings")}:
        index = arrays[f"{name}.index"]
        trajectories[name] = Trajectory(
            AdamWSettings(**json.loads(str(arrays[f"{name}.settings"]))),
            index if index.size else None,
            *(arrays[f"{name}.{field}"] for field in ("losses", "grad_norms", "params", "m", "v")),
        )
    return trajectories


def _load_manifest(path):
    """-> the manifest dict, every entry this module uses checked for its type (and the config for sense)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(path, "json", f"is not valid JSON: {e}") from e
    _expect(path, "manifest", manifest, dict, "an object")
    for key in ("config", "files", "expected", "optimizer", "B", "T"):
        if key not in manifest:
            raise FormatError(path, key, f"has no {key!r} entry")

    config = _expect(path, "config", manifest["config"], dict, "an object")
    _check_keys(path, "config", config, required=CONFIG_KEYS, allowed=CONFIG_KEYS)
    try:
        GPT2Config(**config)
    except ValueError as e:
        raise FormatError(path, "config", f"config: {e}") from e

    for name, entry in _expect(path, "files", manifest["files"], dict, "an object").items():
        field = f"files[{name!r}]"
        _expect(path, field, entry, dict, "an object")
        _check_keys(path, field, entry, required=("size", "sha256"))
        if _expect(path, f"{field}.size", entry["size"], int, "an integer") < 0:
            raise FormatError(path, f"{field}.size", f"{field}.size is {entry['size']}, must be >= 0")
        _expect(path, f"{field}.sha256", entry["sha256"], str, "a hex string")

    expected = _expect(path, "expected", manifest["expected"], dict, "an object")
    _check_keys(path, "expected", expected, required=("losses",))
    losses = _expect(path, "expected.losses", expected["losses"], list, "a list")
    if len(losses) != TRAIN_STEPS:
        raise FormatError(
            path, "expected.losses", f"expected.losses has {len(losses)} values, test_gpt2's loop needs {TRAIN_STEPS}"
        )
    for i, loss in enumerate(losses):
        if not _is_number(loss) or not math.isfinite(loss):
            raise FormatError(path, "expected.losses", f"expected.losses[{i}] is {loss!r}, must be a finite number")

    optimizer = _expect(path, "optimizer", manifest["optimizer"], dict, "an object")
    _check_keys(path, "optimizer", optimizer, allowed=OPTIMIZER_KEYS)
    for key, value in optimizer.items():
        is_flag = key == "decay_all"
        if not (isinstance(value, bool) if is_flag else _is_number(value)):
            raise FormatError(
                path,
                f"optimizer.{key}",
                f"optimizer.{key} is {value!r}, must be a {'boolean' if is_flag else 'number'}",
            )

    for key in ("B", "T"):
        if _expect(path, key, manifest[key], int, "an integer") <= 0:
            raise FormatError(path, key, f"{key} is {manifest[key]}, must be positive")
    return manifest


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _expect(path, field, value, kind, description):
    """value, if it is a `kind` (JSON true/false never pass for an integer)."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FormatError(path, field, f"{field} is {value!r}, must be {description}")
    return value


def _check_keys(path, field, entry, required=(), allowed=None):
    """Every `required` key present; with `allowed`, no other key (a misspelt setting must not pass silently)."""
    missing = [key for key in required if key not in entry]
    if missing:
        raise FormatError(path, field, f"{field} has no {missing[0]!r} entry")
    unknown = sorted(set(entry) - set(allowed)) if allowed is not None else []
    if unknown:
        raise FormatError(path, field, f"{field} has unknown entry {unknown[0]!r} (known: {', '.join(allowed)})")


FILE_ROLES = {
    CHECKPOINT: "model checkpoint (llm.c's gpt2_124M.bin format, fp32)",
    CHECKPOINT_BF16: "bf16 model checkpoint",
    DEBUG_STATE: "debug state (llm.c's gpt2_124M_debug_state.bin: the batch, step-0 logits, loss and gradients)",
    MANIFEST: "manifest",
}


def _how_to_make(dirpath):
    """How the fixture directory dirpath is made, in words."""
    dirpath = Path(dirpath).resolve()
    if dirpath == GPT2_124M_FIXTURE.resolve():
        return "run `make fixtures` to generate this fixture"
    if dirpath in [(FIXTURES_DIR / n).resolve() for n in COMMITTED_FIXTURES]:
        return (
            f"it is committed: `git checkout -- fixtures/{dirpath.name}`, or regenerate the committed "
            "fixtures with `python -m tools.make_fixtures --committed`"
        )
    return (
        f"make a fixture there with `python -m tools.make_fixtures --model DESCRIPTOR {dirpath}`, or use the "
        "output directory of llm.c's train_gpt2.py"
    )


def _missing_file(dirpath, name, listed_in=None):
    """FileNotFoundError saying which file of the fixture dirpath is missing, what it holds, and how to make it."""
    listed = f" (listed in {listed_in})" if listed_in else ""
    return FileNotFoundError(
        f"{Path(dirpath) / name}: the fixture's {FILE_ROLES.get(name, 'file')} is "
        f"missing{listed}; {_how_to_make(dirpath)}"
    )


def _verify_files(dirpath, manifest_path, manifest):
    for name, entry in manifest["files"].items():
        path = dirpath / name
        if not path.exists():
            raise _missing_file(dirpath, name, listed_in=manifest_path)
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
        raise FileNotFoundError(f"{dirpath}: no such fixture directory; {_how_to_make(dirpath)}")
    manifest_path = dirpath / MANIFEST
    manifest = _load_manifest(manifest_path) if manifest_path.exists() else None
    if manifest and verify:
        _verify_files(dirpath, manifest_path, manifest)
    for name in (CHECKPOINT, DEBUG_STATE):
        if not (dirpath / name).is_file():
            raise _missing_file(dirpath, name)
    config, params = read_checkpoint(dirpath / CHECKPOINT)
    if manifest and GPT2Config(**manifest["config"]) != config:
        raise FormatError(
            dirpath / CHECKPOINT,
            "config",
            f"header config {config} differs from {manifest_path}'s {manifest['config']}",
        )
    state = read_debug_state(dirpath / DEBUG_STATE, config)
    if manifest and (state.B, state.T) != (manifest["B"], manifest["T"]):
        raise FormatError(
            dirpath / DEBUG_STATE,
            "header[2]",
            f"B={state.B}, T={state.T} differ from {manifest_path}'s B={manifest['B']}, T={manifest['T']}",
        )
    return Fixture(dirpath, config, params, state, manifest)


def default_fixture_dirs():
    """The committed fixture directories, then fixtures/gpt2_124M where it has been generated."""
    dirs = [FIXTURES_DIR / name for name in COMMITTED_FIXTURES]
    if (GPT2_124M_FIXTURE / CHECKPOINT).exists():
        dirs.append(GPT2_124M_FIXTURE)
    return dirs
