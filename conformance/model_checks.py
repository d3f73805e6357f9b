"""Model-level checks of one backend on one fixture: everything its model handle returns, judged by the
tolerance table against the float64 oracle.

The same function feeds pytest (conformance/test_model.py) and the main job (tools/conform.py):

    run = run_model(backend, fixture)        # ModelRun: .results (CheckResults), .not_run (NotRun, with why)
    results = run_model_checks(backend, fixture)   # the results; ModelChecksStopped if any check did not run
    check_names(fixture)                     # every check's name, in run order

The checks come in segments, each on a model of its own: a segment that stops (the backend does not
support something, or raised) costs its own remaining checks, which are "skipped" or ERROR with the
reason, and the next segment starts afresh. After a call that timed out the fixture's remaining
checks are ERROR without being tried. Names are <fixture>/<check>:

step 0 (one forward with targets, zero_grad, backward, on the fixture's batch)
    logits              the first V of Vp columns, every element, vs the oracle's (B,T,V)
    logits_padding      columns V..Vp exactly zero (the padded wte rows are zero)
    loss
    grad/<dname>        each of the 16 gradients (dwte over its first V rows)
    grad/dqkvb[key]     the key third of dqkvb: zero in exact arithmetic (a shift of every key leaves the
                        softmax unchanged), so its rounding noise is judged against the scale of the whole
                        dqkvb, never relative to itself
    wte_padding/params, wte_padding/grads   rows V..Vp of wte and dwte exactly zero
train: then, on the same model, test_gpt2.c's loop (forward, zero_grad, backward, AdamW update with
t = step+1 and the fixture's optimizer, TEST_GPT2_SETTINGS: decay on every tensor, no clipping), with
everything the update returns judged against the oracle's float64 trajectory (reference/oracle.py:
expected_trajectory; a large model's parameter-sized arrays at a fixed sample of positions per tensor):
    train_loss/<k>      the loss before update k+1, k = 0..9 (the fixture's expected losses), and
    train_loss/10       the loss after the 10th update
    grad_norm/<k>       the gradient norm update k+1 returns (before clipping)
    params/<k>, m/<k>, v/<k>   the parameters and AdamW's m and v after update k+1
decay_2d_clip/...       the same loop, on a new model, in the other convention (PyTorch's, llm.c CUDA's:
                        decay on the 2-D tensors only, the gradient clipped to norm 1 first)
rerun/<what>            a second model repeats step 0 and the first update; logits, loss, grads, grad_norm,
                        params, m and v must be the same bits. A backend that does not declare itself
                        deterministic (Backend.deterministic) is not failed for a difference: the check
                        passes as informational, and the report shows the difference
abi/...                 the rest of the model API (native/llmc.h), each against the oracle:
    abi/from_checkpoint/{params,logits,loss}   a model read by the backend from the fixture's checkpoint
    abi/set_params/{params,logits}             set_params onto a model made with other parameters
    abi/resume/{train_loss,grad_norm,params,m,v}  a new model from the state after update 1 (its parameters,
                                                 set_optimizer_state(m, v)) makes update 2: the trajectory's
    abi/accumulate/grad/<dname>                forward and backward twice, no zero_grad between: twice each gradient
    abi/reshape/{logits_short,logits,loss}     a forward of a smaller B and T, then the full one again
    abi/model_config                           the configuration and parameter count the model reports
    abi/save_checkpoint/{v3,v5}                the checkpoint the backend writes of a model made from the
                                               fixture's parameters, read back by the oracle's reader (every
                                               header field, the size): the fixture's configuration, and its
                                               parameters bit for bit (v3) or each rounded to the nearest
                                               bf16, ties to even (v5, as llm.c's train_gpt2.py writes it)
"""

from dataclasses import dataclass, replace
from pathlib import Path
import tempfile

import numpy as np

from backends.ports import PortTimeout, is_unsupported
from backends.protocol import PortUnsupported
from conformance.checks import compare
from reference.adamw import AdamWSettings
from reference.formats import bf16_bits_to_fp32, fp32_to_bf16_bits, read_checkpoint
from reference.model import PARAM_NAMES, split_params

GRAD_NAMES = tuple("d" + name for name in PARAM_NAMES)
TRAIN_STEPS = 10
# the second AdamW convention, judged on every fixture next to the fixture's own (test_gpt2.c's): PyTorch's
# and llm.c CUDA's decay of the 2-D tensors only, and global-norm clipping (every fixture's gradient norm
# exceeds 1, so it clips)
DECAY_2D_CLIP = AdamWSettings(
    learning_rate=1e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay_all=False, grad_clip=1.0
)
CONVENTIONS = ("train", "decay_2d_clip")  # the trajectory names: the fixture's optimizer, then DECAY_2D_CLIP
RERUN_OUTPUTS = ("logits", "loss", "grads", "grad_norm", "params", "m", "v")
RESUME_OUTPUTS = ("train_loss", "grad_norm", "params", "m", "v")


# Every output a port returns, and the check that judges it (what tests/test_meta.py perturbs, expecting that
# check to fail; it derives the outputs from the protocol's REPLIES and llmc.h, so a new one needs an entry):
# (protocol call, array) of a cmd: port's reply, (llmc.h function, argument or "return") of a lib: port
JUDGED_BY = {
    ("forward", "logits"): "abi/reshape/logits_short",  # the suite sends `forward` inputs only
    ("backward", "logits"): "logits",
    ("backward", "loss"): "loss",
    ("backward", "grads"): "grad/dwte",  # element 0: the first row of wte's gradient
    ("train", "losses"): "train_loss/1",  # the one-step look-ahead answers the next forward
    ("train", "grad_norms"): "grad_norm/0",
    ("train", "params"): "params/0",
    ("train", "m"): "m/0",
    ("train", "v"): "v/0",
    ("llmc_forward", "mean_loss"): "loss",
    ("llmc_get_logits", "dst"): "logits",
    ("llmc_get_grads", "dst"): "grad/dwte",
    ("llmc_get_params", "dst"): "params/0",
    ("llmc_update", "grad_norm"): "grad_norm/0",
    ("llmc_get_optimizer_state", "m"): "m/0",
    ("llmc_get_optimizer_state", "v"): "v/0",
    ("llmc_model_config", "out"): "abi/model_config",
    ("llmc_model_num_parameters", "return"): "abi/model_config",
    ("llmc_dist_mean", "values"): "loss",  # under dpN:BASE, the whole batch's loss
}


def convention_settings(fixture, convention):
    return fixture.optimizer if convention == "train" else DECAY_2D_CLIP


@dataclass
class NotRun:
    """A check that produced no result: verdict "ERROR" (the backend raised) or "skipped" (unsupported)."""

    check: str
    backend: str
    verdict: str
    reason: str


@dataclass
class ModelRun:
    results: list
    not_run: list


class ModelChecksStopped(Exception):
    """Some checks did not run: .results are the checks made, .not_run the others (NotRun), .cause what
    stopped the first segment that stopped."""

    def __init__(self, backend, fixture, results, not_run, cause):
        super().__init__(
            f"{backend} on {fixture}: {len(not_run)} checks not run; first: {type(cause).__name__}: {cause}"
        )
        self.backend, self.fixture, self.results, self.not_run, self.cause = backend, fixture, results, not_run, cause


def _train_names(prefix):
    names = []
    for k in range(TRAIN_STEPS):
        names += [
            f"{prefix}train_loss/{k}",
            f"{prefix}grad_norm/{k}",
            f"{prefix}params/{k}",
            f"{prefix}m/{k}",
            f"{prefix}v/{k}",
        ]
    return names + [f"{prefix}train_loss/{TRAIN_STEPS}"]


STEP0_NAMES = (
    "logits",
    "logits_padding",
    "loss",
    *(f"grad/{d}" for d in GRAD_NAMES),
    "grad/dqkvb[key]",
    "wte_padding/params",
    "wte_padding/grads",
)
SEGMENTS = {  # segment -> the names of its checks, in the order it makes them
    "train": STEP0_NAMES + tuple(_train_names("")),
    "rerun": tuple(f"rerun/{what}" for what in RERUN_OUTPUTS),
    "decay_2d_clip": tuple(_train_names("decay_2d_clip/")),
    "abi/from_checkpoint": ("abi/from_checkpoint/params", "abi/from_checkpoint/logits", "abi/from_checkpoint/loss"),
    "abi/set_params": ("abi/set_params/params", "abi/set_params/logits"),
    "abi/resume": tuple(f"abi/resume/{what}" for what in RESUME_OUTPUTS),
    "abi/accumulate": tuple(f"abi/accumulate/grad/{d}" for d in GRAD_NAMES),
    "abi/reshape": ("abi/reshape/logits_short", "abi/reshape/logits", "abi/reshape/loss"),
    "abi/model_config": ("abi/model_config",),
    "abi/save_checkpoint": ("abi/save_checkpoint/v3", "abi/save_checkpoint/v5"),
}
CHECK_NAMES = tuple(name for names in SEGMENTS.values() for name in names)


def check_names(fixture):
    return [f"{fixture.name}/{name}" for name in CHECK_NAMES]


def run_model_checks(backend, fixture):
    """Every model-level check of `backend` on `fixture` -> list[CheckResult]; ModelChecksStopped when some
    did not run (its .results and .not_run say which ran and why the others did not)."""
    run = run_model(backend, fixture)
    if run.not_run:
        raise ModelChecksStopped(backend.name, fixture.name, run.results, run.not_run, run.cause)
    return run.results


def run_model(backend, fixture, segments=None):
    """Every segment of checks (or those named) -> ModelRun (plus .cause: the first exception that stopped
    a segment)."""
    return _Run(backend, fixture).run(segments)


class _Run:
    def __init__(self, backend, fixture):
        self.backend, self.fixture = backend, fixture
        self.prec = backend.precision
        self.results, self.not_run, self.cause = [], [], None
        self.first = {}  # what the train segment's first run produced, for rerun and resume
        self.stopped = {}  # segment -> the exception that stopped it
        self.timed_out = None

    def run(self, only=None):
        f = self.fixture
        for segment, body in (
            ("train", self.train),
            ("rerun", self.rerun),
            ("decay_2d_clip", self.decay_2d_clip),
            ("abi/from_checkpoint", self.from_checkpoint),
            ("abi/set_params", self.set_params),
            ("abi/resume", self.resume),
            ("abi/accumulate", self.accumulate),
            ("abi/reshape", self.reshape),
            ("abi/model_config", self.model_config),
            ("abi/save_checkpoint", self.save_checkpoint),
        ):
            if only is not None and segment not in only:
                continue
            names = [f"{f.name}/{n}" for n in SEGMENTS[segment]]
            if self.timed_out is not None:
                self._not_run(
                    names, "ERROR", f"not tried: an earlier call of this fixture timed out ({self.timed_out})"
                )
                continue
            try:
                body()
            except Exception as e:  # the backend's failure: its checks become ERROR (skipped: unsupported)
                self.cause = self.cause or e
                self.stopped[segment] = e
                if isinstance(e, PortTimeout):
                    self.timed_out = str(e)
                unsupported = is_unsupported(e)
                self._not_run(
                    names,
                    "skipped" if unsupported else "ERROR",
                    f"unsupported: {e}" if unsupported else f"{type(e).__name__}: {e}",
                )
        run = ModelRun(self.results, self.not_run)
        run.cause = self.cause
        return run

    # -------------------------------------------------------------- judging
    def _not_run(self, names, verdict, reason):
        done = {r.check for r in self.results} | {n.check for n in self.not_run}
        self.not_run += [NotRun(n, self.backend.name, verdict, reason) for n in names if n not in done]

    def judge(self, check, got, want, quantity, scale=None):
        result = compare(f"{self.fixture.name}/{check}", self.backend.name, got, want, (quantity, self.prec), scale)
        self.results.append(result)
        return result

    def judge_flat(self, check, got, want, quantity, index, exact_full=None):
        """A parameter-sized array at the trajectory's positions (index None: all). want is already at
        those positions. exact_full: the full array it must equal bit for bit (rerun, exact copies)."""
        got = np.asarray(got)
        result = self.judge(check, got if index is None else got[index], want, quantity)
        notes = []
        if index is not None:
            notes.append(f"judged at {index.size} of {got.size} positions (a fixed sample of every tensor)")
        if exact_full is not None and index is not None and result.passed and not np.array_equal(got, exact_full):
            differ = int(np.count_nonzero(got != exact_full))
            result = replace(result, passed=False)
            notes.append(f"{differ} elements differ outside the sample")
        if notes:
            result = replace(result, detail="; ".join([result.detail] + notes))
            self.results[-1] = result
        return result

    def judge_fixture_params(self, check, model):
        """The model's parameters must be the fixture's, bit for bit."""
        f, index = self.fixture, self.trajectory("train").index
        want = f.params if index is None else f.params[index]
        self.judge_flat(check, model.params(), want, "exact", index, exact_full=f.params)

    def _informational(self, result):
        """A rerun result of a backend that does not declare itself bit-reproducible: reported, not failed."""
        if self.backend.deterministic:
            return
        note = ("identical" if result.passed else "DIFFERS") + (
            " (informational: the backend does not declare itself deterministic)"
        )
        self.results[-1] = replace(
            result, passed=True, informational=not result.passed, detail=f"{note}; {result.detail}"
        )

    def model(self, params=None):
        f = self.fixture
        return self.backend.model(f.config, f.params if params is None else params, f.B, f.T)

    def _needs_first(self, *what):
        """The train segment's values `what`; where it stopped before them, its exception (the same verdict
        and reason for the checks that needed them)."""
        if not all(w in self.first for w in what):
            raise self.stopped.get("train") or RuntimeError("the train segment produced no " + ", ".join(what))

    def trajectory(self, convention):
        return self.fixture.trajectory(convention, convention_settings(self.fixture, convention))

    # -------------------------------------------------------------- segments
    def train(self):
        f, config = self.fixture, self.fixture.config
        V, C = config.vocab_size, config.channels
        model = self.model()
        try:
            loss = model.forward(f.x, f.y)
            logits = model.logits()  # (B,T,Vp)
            model.zero_grad()
            model.backward()
            flat_grads = model.grads()
            params = split_params(model.params(), config)
            grads = split_params(flat_grads, config)
            want = split_params(np.asarray(f.grads), config)
            self.first.update(logits=logits, loss=loss, grads=flat_grads)

            self.judge("logits", logits[..., :V], f.logits, "logits")
            self.judge("logits_padding", logits[..., V:], np.zeros(logits[..., V:].shape), "padding")
            self.judge("loss", loss, f.loss, "loss")
            for pname, dname in zip(PARAM_NAMES, GRAD_NAMES, strict=True):
                got, expected = grads[pname], want[pname]
                if pname == "wte":
                    got, expected = got[:V], expected[:V]
                self.judge(f"grad/{dname}", got, expected, f"grad:{dname}")
            key = slice(C, 2 * C)  # qkvb rows [C, 2C) are the keys' biases
            self.judge(
                "grad/dqkvb[key]",
                grads["qkvb"][:, key],
                want["qkvb"][:, key],
                "grad_key_bias",
                scale=np.linalg.norm(want["qkvb"].astype(np.float64)),
            )
            for what, values in (("params", params["wte"][V:]), ("grads", grads["wte"][V:])):
                self.judge(f"wte_padding/{what}", values, np.zeros(values.shape), "padding")
            del params, grads, want
            self._loop(model, "train", "", keep_first=True)
        finally:
            model.close()

    def decay_2d_clip(self):
        model = self.model()
        try:
            self._loop(model, "decay_2d_clip", "decay_2d_clip/")
        finally:
            model.close()

    def _loop(self, model, convention, prefix, keep_first=False):
        f = self.fixture
        trajectory = self.trajectory(convention)
        expected_losses = list(f.expected_losses) if convention == "train" else list(trajectory.losses[:TRAIN_STEPS])
        expected_losses.append(trajectory.losses[TRAIN_STEPS])  # after the 10th update: the trajectory's
        for step in range(TRAIN_STEPS):
            loss = model.forward(f.x, f.y)
            self.judge(f"{prefix}train_loss/{step}", loss, expected_losses[step], "losses10")
            model.zero_grad()
            model.backward()
            norm = model.update(trajectory.settings, step + 1)
            self.judge(f"{prefix}grad_norm/{step}", norm, trajectory.grad_norms[step], "grad_norm")
            params = model.params()
            m, v = model.optimizer_state()
            for what, values in (("params", params), ("m", m), ("v", v)):
                self.judge_flat(
                    f"{prefix}{what}/{step}", values, getattr(trajectory, what)[step], what, trajectory.index
                )
            if keep_first and step == 0:
                self.first.update(grad_norm=norm, params=params, m=m, v=v)
            del params, m, v
        loss = model.forward(f.x, f.y)
        self.judge(f"{prefix}train_loss/{TRAIN_STEPS}", loss, expected_losses[TRAIN_STEPS], "losses10")

    def rerun(self):
        """The same calls on a second model; each output against the first model's, bit for bit."""
        f = self.fixture
        self._needs_first("logits", "loss", "grads")
        index = self.trajectory("train").index
        model = self.model()
        try:
            second = {"loss": model.forward(f.x, f.y), "logits": model.logits()}
            model.zero_grad()
            model.backward()
            second["grads"] = model.grads()
            if "grad_norm" in self.first:
                second["grad_norm"] = model.update(f.optimizer, 1)
                second["params"] = model.params()
                second["m"], second["v"] = model.optimizer_state()
        finally:
            model.close()
        for what in RERUN_OUTPUTS:
            if what not in self.first:
                continue
            first, got = self.first[what], second[what]
            if what in ("grads", "params", "m", "v"):
                result = self.judge_flat(
                    f"rerun/{what}", got, first if index is None else first[index], "rerun", index, exact_full=first
                )
            else:
                result = self.judge(f"rerun/{what}", got, first, "rerun")
            self._informational(result)
        self._needs_first(*RERUN_OUTPUTS)

    def _require(self, feature):
        reason = self.backend.unsupported(feature)
        if reason:
            raise PortUnsupported(reason)

    def from_checkpoint(self):
        self._require("from_checkpoint")
        f = self.fixture
        model = self.backend.model_from_checkpoint(f.checkpoint_path, f.B, f.T)
        try:
            self.judge_fixture_params("abi/from_checkpoint/params", model)
            loss = model.forward(f.x, f.y)
            self.judge("abi/from_checkpoint/logits", model.logits()[..., : f.config.vocab_size], f.logits, "logits")
            self.judge("abi/from_checkpoint/loss", loss, f.loss, "loss")
        finally:
            model.close()

    def set_params(self):
        self._require("set_params")
        f = self.fixture
        model = self.model(params=f.params * np.float32(0.5))
        try:
            model.set_params(f.params)
            self.judge_fixture_params("abi/set_params/params", model)
            model.forward(f.x, f.y)
            self.judge("abi/set_params/logits", model.logits()[..., : f.config.vocab_size], f.logits, "logits")
        finally:
            model.close()

    def resume(self):
        """Update 2 on a new model given the state after update 1: set_params, set_optimizer_state (a cmd:
        port's --state file), against the trajectory's second update."""
        f = self.fixture
        self._needs_first("params", "m", "v")
        trajectory = self.trajectory("train")
        model = self.model(params=self.first["params"])
        try:
            model.set_optimizer_state(self.first["m"], self.first["v"])
            loss = model.forward(f.x, f.y)
            self.judge("abi/resume/train_loss", loss, f.expected_losses[1], "losses10")
            model.zero_grad()
            model.backward()
            norm = model.update(trajectory.settings, 2)
            self.judge("abi/resume/grad_norm", norm, trajectory.grad_norms[1], "grad_norm")
            params = model.params()
            m, v = model.optimizer_state()
            for what, values in (("params", params), ("m", m), ("v", v)):
                self.judge_flat(f"abi/resume/{what}", values, getattr(trajectory, what)[1], what, trajectory.index)
        finally:
            model.close()

    def accumulate(self):
        """Gradient accumulation: forward and backward twice on the batch, one zero_grad before: the
        parameter gradients hold twice the gradient (and only those accumulate: the activation gradients
        of the second backward start from zero)."""
        self._require("accumulate")
        f, config = self.fixture, self.fixture.config
        model = self.model()
        try:
            model.zero_grad()
            for _ in range(2):
                model.forward(f.x, f.y)
                model.backward()
            grads = split_params(model.grads() / np.float32(2), config)  # halving is exact
        finally:
            model.close()
        want = split_params(np.asarray(f.grads), config)
        V = config.vocab_size
        for pname, dname in zip(PARAM_NAMES, GRAD_NAMES, strict=True):
            rows = slice(0, V) if pname == "wte" else slice(None)
            self.judge(f"abi/accumulate/grad/{dname}", grads[pname][rows], want[pname][rows], f"grad:{dname}")

    def reshape(self):
        """A smaller batch first (the model was sized for the fixture's B and T), then the full one: causal
        attention makes the oracle's logits of the shorter batch the first rows of the full ones."""
        f = self.fixture
        V = f.config.vocab_size
        B, T = max(1, f.B // 2), max(1, f.T // 2)
        model = self.model()
        try:
            model.forward(f.x[:B, :T])
            self.judge("abi/reshape/logits_short", model.logits()[..., :V], f.logits[:B, :T], "logits")
            loss = model.forward(f.x, f.y)
            self.judge("abi/reshape/logits", model.logits()[..., :V], f.logits, "logits")
            self.judge("abi/reshape/loss", loss, f.loss, "loss")
        finally:
            model.close()

    def model_config(self):
        self._require("model_config")
        f = self.fixture
        model = self.model()
        try:
            config = getattr(model, "reported_config", None) or model.config
            got = [*(getattr(config, k) for k in vars(f.config)), model.num_parameters]
        finally:
            model.close()
        want = [*vars(f.config).values(), f.config.num_parameters]
        result = self.judge("abi/model_config", np.array(got, np.float64), np.array(want, np.float64), "exact")
        fields = ", ".join(vars(f.config))
        self.results[-1] = replace(result, detail=f"{fields}, num_parameters: got {got}, want {want}")

    def save_checkpoint(self):
        self._require("save_checkpoint")
        f = self.fixture
        index = self.trajectory("train").index
        model = self.model()
        try:
            with tempfile.TemporaryDirectory() as directory:
                for version, dtype in ((3, "fp32"), (5, "bf16")):
                    path = Path(directory) / f"saved_v{version}.bin"
                    model.save_checkpoint(path, dtype)
                    config, params = read_checkpoint(path)
                    path.unlink()  # a gpt2_124M file is 0.5 GB
                    want = f.params if dtype == "fp32" else bf16_bits_to_fp32(fp32_to_bf16_bits(f.params))
                    check = f"abi/save_checkpoint/v{version}"
                    result = self.judge_flat(
                        check, params, want if index is None else want[index], "exact", index, exact_full=want
                    )
                    if config != f.config:
                        detail = f"{result.detail}; header: {config}, want {f.config}"
                        self.results[-1] = replace(result, passed=False, detail=detail)
        finally:
            model.close()
