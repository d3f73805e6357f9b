"""Train GPT-2 on any backend with llm.c's training loop: python -m tools.train --backend cpu --model d6

The loop is train_gpt2.cu's: for step = 0..steps (inclusive): val loss every --val-every steps and at
the last step; a sample every --sample-every steps (step > 0) and at the last step; a checkpoint every
--checkpoint-every steps (step > 0) and at the last step; then, unless it is the last step, one
optimizer step of --total-batch-size tokens (grad_accum = total / (B*T) micro-batches) at the
scheduled learning rate, logged as `s:STEP trl:LOSS lr:LR norm:NORM` (val: `s:STEP tel:LOSS`) in
OUTPUT_DIR/main.log. With matplotlib installed the end of a run draws OUTPUT_DIR/loss.png.

Gradient accumulation: every backward() seeds its loss gradient with 1/(B*T) and accumulates, so after
grad_accum micro-batches the gradient is grad_accum times the gradient of the whole batch's mean loss.
AdamW is scale-free up to eps, so the update runs on that sum with eps and the clipping threshold
multiplied by grad_accum: m and v then hold grad_accum and grad_accum^2 times their usual values, and
the update is the one from the averaged gradient, exactly in real arithmetic and bit for bit when
grad_accum is a power of two (scaling by it is exact in binary floating point). This needs no
grad-scale argument in the backends' update(). The printed norm is divided back.

Checkpoints (OUTPUT_DIR, step = %08d), written atomically in this order, so a crash or Ctrl-C at any
point leaves every DONE-marked step complete:
  model_STEP.bin   the parameters, llm.c's model checkpoint (reference.formats.write_checkpoint)
  state_STEP.bin   this trainer's state, little-endian; header int32[256], the rest zero:
                     [0] magic 20261126, [1] version 1, [2] step, [3] B, [4] T, [5] grad_accum,
                     [10..11] uint64 num_parameters, [12..13] uint64 train loader position (token index),
                     [14..15] uint64 sampler xorshift state
                   then AdamW m and v, num_parameters float32 each (in the grad_accum scale above)
  DONE_STEP        empty: the step is complete
--keep-last N deletes all but the newest N. --resume continues from the newest DONE step with the
same B, T and total batch size: the losses from there on equal an uninterrupted run's bit for bit on a
deterministic backend.

Example (cpu backend, 2 cores: about 2 minutes, val loss 10.87 -> 5.74, then a sample):
    python -m tools.train --backend cpu --threads 2 --model L4-NH4-C128 -B 8 -T 64 --steps 600 --lr 2e-3 \
        --warmup 20 --final-lr-frac 0.1 --val-every 50 --val-batches 10 --sample-every 300 --output-dir out/shakespeare

Exit status 2 with a one-line message for a bad argument or input file, 130 on Ctrl-C.
"""
import argparse
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conformance.backends import BackendUnavailable, get_backend
from reference import tokenizer
from reference.adamw import AdamWSettings
from reference.formats import HEADER_BYTES, HEADER_INTS, FormatError, _check_reserved_zero, _check_size, \
    _read_header, atomic_write, check_tokens, read_checkpoint, read_tokens, write_checkpoint
from reference.model import GPT2Config, init_params
from tools.prepare_data import ensure_tinyshakespeare

STATE_MAGIC = 20261126
STATE_VERSION = 1
SAMPLER_SEED = 1337          # llm.c's rng_state for generation
SCHEDULES = ("cosine", "linear", "constant")


class UsageError(Exception):
    """A bad argument or input file: main() prints the message on one line and exits 2."""


# ----------------------------------------------------------------------------- arguments
class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def parse_args(argv):
    p = _Parser(prog="python -m tools.train", description=__doc__.splitlines()[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backend", default="cpu", help="reference, cpu, cuda, cuda-tf32, cuda-bf16, lib:PATH or cmd:COMMAND")
    p.add_argument("--model", default="d6",
                   help="an llm.c checkpoint .bin, or a random init: d6, d12, ... or L4-NH4-C128[-V..][-T..]")
    p.add_argument("--seed", type=int, default=42, help="random-init seed (descriptor models)")
    p.add_argument("--train-data", help="llm.c token file (default: tiny Shakespeare, prepared on first use)")
    p.add_argument("--val-data", help="llm.c token file (default: tiny Shakespeare val)")
    p.add_argument("-B", "--batch-size", type=int, default=4, help="micro-batch size")
    p.add_argument("-T", "--seq-len", type=int, default=64, help="sequence length")
    p.add_argument("--total-batch-size", type=int, help="tokens per optimizer step (default B*T); "
                                                         "a multiple of B*T, the rest is gradient accumulation")
    p.add_argument("--steps", type=int, default=-1, help="optimizer steps (-1: one epoch of the train data)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="decay after warmup")
    p.add_argument("--warmup", type=int, default=0, help="linear warmup steps")
    p.add_argument("--final-lr-frac", type=float, default=1.0, help="final lr as a fraction of --lr")
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--decay-all", action="store_true",
                   help="weight decay on every parameter (llm.c CPU); default: 2-D tensors only (PyTorch, llm.c CUDA)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="global-norm clip threshold (<= 0: off)")
    p.add_argument("--val-every", type=int, default=20, help="val loss every N steps (0: never)")
    p.add_argument("--val-batches", type=int, default=20, help="val batches per evaluation")
    p.add_argument("--sample-every", type=int, default=20, help="print a sample every N steps (0: never)")
    p.add_argument("--gen-tokens", type=int, default=64, help="tokens per sample")
    p.add_argument("--output-dir", default="out/train", help="main.log, loss.png and checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps and at the end (0: never)")
    p.add_argument("--keep-last", type=int, default=0, help="delete all but the newest N checkpoints (0: keep all)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --output-dir (--model is then not read)")
    p.add_argument("--stop-at", type=int, help="end this run at that step (after its checkpoint), as an interruption would")
    p.add_argument("--threads", type=int, help="threads for the cpu backend")
    p.add_argument("--quiet", action="store_true", help="no per-step progress lines")
    args = p.parse_args(argv)

    for flag in ("batch_size", "seq_len", "val_batches", "gen_tokens"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag.replace('_', '-')}: must be positive, got {getattr(args, flag)}")
    for flag in ("warmup", "val_every", "sample_every", "checkpoint_every", "keep_last"):
        if getattr(args, flag) < 0:
            raise UsageError(f"--{flag.replace('_', '-')}: must be >= 0, got {getattr(args, flag)}")
    if args.steps < -1:
        raise UsageError(f"--steps: must be >= 0 or -1 (one epoch), got {args.steps}")
    if not args.lr > 0:
        raise UsageError(f"--lr: must be positive, got {args.lr}")
    if not 0 <= args.final_lr_frac <= 1:
        raise UsageError(f"--final-lr-frac: must lie in [0, 1], got {args.final_lr_frac}")
    for flag in ("beta1", "beta2"):
        if not 0 <= getattr(args, flag) < 1:
            raise UsageError(f"--{flag}: must lie in [0, 1), got {getattr(args, flag)}")
    if args.stop_at is not None and args.stop_at < 0:
        raise UsageError(f"--stop-at: must be >= 0, got {args.stop_at}")
    if args.threads is not None and args.threads <= 0:
        raise UsageError(f"--threads: must be positive, got {args.threads}")
    BT = args.batch_size * args.seq_len
    if args.total_batch_size is None:
        args.total_batch_size = BT
    if args.total_batch_size <= 0 or args.total_batch_size % BT:
        raise UsageError(f"--total-batch-size: {args.total_batch_size} is not a positive multiple of "
                         f"B*T = {BT}")
    return args


# ----------------------------------------------------------------------------- schedule
def learning_rate(step, args, total_steps):
    """llm.c's schedulers.h: linear warmup over --warmup steps, then cosine / linear decay from --lr to
    --lr * --final-lr-frac at the last step, or constant."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    if args.schedule == "constant":
        return args.lr
    min_lr = args.lr * args.final_lr_frac
    decay_ratio = (step - args.warmup) / max(1, total_steps - args.warmup)
    if args.schedule == "cosine":
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * decay_ratio)) * (args.lr - min_lr)
    return args.lr - decay_ratio * (args.lr - min_lr)


# ----------------------------------------------------------------------------- data
class DataLoader:
    """llm.c's non-shuffled loader over one token file: batch k is tokens[pos : pos + B*T + 1] as
    inputs (the first B*T) and targets (the last B*T); pos advances by B*T and wraps to 0 when the
    next batch would run past the end."""

    def __init__(self, path, B, T, vocab_size, flag):
        try:
            self.tokens = read_tokens(path)
            check_tokens(self.tokens, vocab_size, path, B, T)
        except FileNotFoundError as e:
            raise UsageError(f"{flag}: {e}") from e
        except FormatError as e:
            raise UsageError(f"{flag}: {e}") from e
        self.B, self.T = B, T
        self.position = 0

    @property
    def num_batches(self):
        """Batches in one pass over the file."""
        return (self.tokens.size - 1) // (self.B * self.T)

    def reset(self):
        self.position = 0

    def next_batch(self):
        B, T = self.B, self.T
        buf = self.tokens[self.position:self.position + B * T + 1].astype(np.int32)
        self.position += B * T
        if self.position + B * T + 1 > self.tokens.size:
            self.position = 0
        return buf[:-1].reshape(B, T), buf[1:].reshape(B, T)


# ----------------------------------------------------------------------------- sampling
MASK64 = (1 << 64) - 1


class Sampler:
    """llm.c's generation RNG (xorshift*, random_u32 / random_f32) and sample_mult."""

    def __init__(self, state=SAMPLER_SEED):
        self.state = state

    def random_u32(self):
        s = self.state
        s ^= s >> 12
        s ^= (s << 25) & MASK64
        s ^= s >> 27
        self.state = s
        return ((s * 0x2545F4914F6CDD1D) & MASK64) >> 32

    def random_f32(self):
        return np.float32(self.random_u32() >> 8) / np.float32(16777216.0)

    @staticmethod
    def sample_mult(probs, coin):
        """The first index whose running float32 sum exceeds coin (the last one if rounding leaves none)."""
        cdf = np.cumsum(probs, dtype=np.float32)         # sequential, like llm.c's loop
        return min(int(np.searchsorted(cdf, coin, side="right")), probs.size - 1)


def generate(model, config, T, gen_tokens, sampler):
    """gen_tokens ids after EOT (token V-1 for a model whose vocabulary is smaller than GPT-2's), each from
    a full forward of the last <= T tokens (no KV cache)."""
    ids = [min(tokenizer.EOT, config.vocab_size - 1)]
    for _ in range(gen_tokens):
        context = np.array([ids[-T:]], dtype=np.int32)
        model.forward(context)
        logits = model.logits()[0, -1, :config.vocab_size].astype(np.float32)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum(dtype=np.float32)
        ids.append(Sampler.sample_mult(probs, sampler.random_f32()))
    return ids[1:]


# ----------------------------------------------------------------------------- checkpoints
def _checkpoint_paths(outdir, step):
    return (outdir / f"model_{step:08d}.bin", outdir / f"state_{step:08d}.bin", outdir / f"DONE_{step:08d}")


def write_state(path, step, B, T, grad_accum, position, sampler_state, m, v):
    header = np.zeros(HEADER_INTS, "<i4")
    header[:6] = STATE_MAGIC, STATE_VERSION, step, B, T, grad_accum
    header.view("<u8")[5:8] = m.size, position, sampler_state      # int32 fields 10..15
    with atomic_write(path) as f:
        f.write(header.tobytes())
        f.write(np.asarray(m, "<f4").tobytes())
        f.write(np.asarray(v, "<f4").tobytes())


def read_state(path, num_parameters):
    """-> dict(step, B, T, grad_accum, position, sampler_state, m, v); FormatError names the field."""
    header = _read_header(path, STATE_MAGIC, (STATE_VERSION,), "trainer state")
    step, B, T, grad_accum = (int(x) for x in header[2:6])
    if step < 0:
        raise FormatError(path, "header[2]", f"header[2] step is {step}, must be >= 0")
    for i, name, value in ((3, "B", B), (4, "T", T), (5, "grad_accum", grad_accum)):
        if value <= 0:
            raise FormatError(path, f"header[{i}]", f"header[{i}] {name} is {value}, must be positive")
    _check_reserved_zero(path, header[:10], 6)     # int32 fields 10..15 hold the three uint64s
    _check_reserved_zero(path, header, 16)
    n, position, sampler_state = (int(x) for x in header.view("<u8")[5:8])
    if n != num_parameters:
        raise FormatError(path, "header[10]", f"header[10] num_parameters is {n}, the model has {num_parameters}")
    _check_size(path, HEADER_BYTES + 8 * n, f"m and v of {n} parameters")
    m = np.fromfile(path, "<f4", count=n, offset=HEADER_BYTES)
    v = np.fromfile(path, "<f4", count=n, offset=HEADER_BYTES + 4 * n)
    return dict(step=step, B=B, T=T, grad_accum=grad_accum, position=position, sampler_state=sampler_state,
                m=m, v=v)


def _done_steps(outdir):
    """Steps with a DONE marker, ascending."""
    return sorted(int(m[1]) for m in (re.fullmatch(r"DONE_(\d{8})", p.name) for p in outdir.glob("DONE_*")) if m)


def delete_old_checkpoints(outdir, keep):
    """All but the newest `keep` DONE steps go, their DONE marker first (a half-deleted one is incomplete)."""
    for step in _done_steps(outdir)[:-keep]:
        model_path, state_path, done_path = _checkpoint_paths(outdir, step)
        for path in (done_path, model_path, state_path):
            path.unlink(missing_ok=True)


def newest_checkpoint(outdir):
    """The highest step with a DONE marker (and its two files), or None."""
    return next((s for s in reversed(_done_steps(outdir))
                 if all(p.exists() for p in _checkpoint_paths(outdir, s)[:2])), None)


# ----------------------------------------------------------------------------- log
def read_log(path):
    """main.log -> ({step: train loss}, {step: val loss})."""
    train, val = {}, {}
    for line in Path(path).read_text().splitlines():
        m = re.match(r"s:(\d+) (trl|tel):(\S+)", line)
        if m:
            (train if m[2] == "trl" else val)[int(m[1])] = float(m[3])
    return train, val


def plot_losses(log_path, png_path):
    """Loss curves from main.log; returns a note when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "loss plot skipped: matplotlib is not installed (pip install -e '.[plot]')"
    train, val = read_log(log_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(list(train), list(train.values()), label="train", lw=1)
    if val:
        ax.plot(list(val), list(val.values()), "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return f"wrote {png_path}"


# ----------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    train_losses: dict = field(default_factory=dict)   # step -> mean loss of that step's batch (float)
    val_losses: dict = field(default_factory=dict)     # step -> mean val loss
    last_step: int = 0


def _load_model_source(spec, seed):
    """--model -> (config, flat float32 params)."""
    if spec.endswith(".bin") or os.path.exists(spec):
        try:
            return read_checkpoint(spec)
        except (FileNotFoundError, FormatError) as e:
            raise UsageError(f"--model: {e}") from e
    try:
        config = GPT2Config.from_descriptor(spec)
    except ValueError as e:
        raise UsageError(f"--model: {e}") from e
    return config, init_params(config, seed, np.float32)


def _format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(args, out=print):
    outdir = Path(args.output_dir)
    outdir.mkdir(parents=True, exist_ok=True)
    B, T = args.batch_size, args.seq_len
    grad_accum = args.total_batch_size // (B * T)

    resume_step = newest_checkpoint(outdir) if args.resume else None
    if args.resume and resume_step is None:
        raise UsageError(f"--resume: no complete checkpoint (DONE_*) in {outdir}")
    if resume_step is None:
        config, params = _load_model_source(args.model, args.seed)
    else:
        model_path, state_path, _ = _checkpoint_paths(outdir, resume_step)
        config, params = read_checkpoint(model_path)
        state = read_state(state_path, config.num_parameters)
        if (state["B"], state["T"], state["grad_accum"]) != (B, T, grad_accum):
            raise UsageError(f"--resume: {state_path} was written with B={state['B']}, T={state['T']}, "
                             f"grad_accum={state['grad_accum']}; this run has B={B}, T={T}, grad_accum={grad_accum}")
    if T > config.max_seq_len:
        raise UsageError(f"-T: {T} exceeds the model's max_seq_len {config.max_seq_len}")

    if args.train_data is None or args.val_data is None:
        val_default, train_default = ensure_tinyshakespeare()
    train_loader = DataLoader(args.train_data or train_default, B, T, config.vocab_size, "--train-data")
    val_loader = DataLoader(args.val_data or val_default, B, T, config.vocab_size, "--val-data")
    val_batches = min(args.val_batches, val_loader.num_batches)
    total_steps = args.steps if args.steps >= 0 else train_loader.num_batches // grad_accum
    can_sample = config.vocab_size <= tokenizer.VOCAB_SIZE

    try:
        backend = get_backend(args.backend)
    except (BackendUnavailable, ValueError) as e:
        raise UsageError(f"--backend {args.backend}: {e}") from e
    if args.threads is not None:
        library = getattr(backend, "library", None)   # native and lib: backends; a lib: port may lack the symbol
        if library is None or not library.has("llmc_set_num_threads"):
            raise UsageError(f"--threads: the {args.backend} backend has no thread setting")
        backend.set_num_threads(args.threads)
    model = backend.model(config, params, B, T)
    sampler = Sampler()
    log_path = outdir / "main.log"
    if resume_step is None:
        start_step = 0
        log_path.write_text("")
    else:
        start_step = resume_step
        if args.stop_at is not None and args.stop_at < resume_step:
            raise UsageError(f"--stop-at: step {args.stop_at} is before the resumed step {resume_step}")
        model.set_optimizer_state(state["m"], state["v"])
        train_loader.position = state["position"]
        sampler.state = state["sampler_state"]
        kept = [l for l in log_path.read_text().splitlines(keepends=True)
                if int(re.match(r"s:(\d+)", l)[1]) < resume_step] if log_path.exists() else []
        with atomic_write(log_path, "w") as f:
            f.writelines(kept)
        out(f"resuming from step {resume_step} ({outdir})")
    out(f"model {args.model}: {config.num_parameters:,} parameters (L={config.num_layers}, NH={config.num_heads}, "
        f"C={config.channels}, V={config.vocab_size}) | backend {backend.name} | B={B} T={T} "
        f"grad_accum={grad_accum} | {total_steps} steps | train {train_loader.tokens.size:,} tokens, "
        f"val {val_batches} batches")

    result = TrainResult()
    step_times = []
    with open(log_path, "a") as log:
        for step in range(start_step, total_steps + 1):
            last_step = step == total_steps
            if args.val_every and (step % args.val_every == 0 or last_step):
                val_loader.reset()
                val_loss = sum(model.forward(*val_loader.next_batch()) for _ in range(val_batches)) / val_batches
                result.val_losses[step] = val_loss
                log.write(f"s:{step} tel:{val_loss:f}\n")
                log.flush()
                out(f"val loss {val_loss:.6f}")
            if can_sample and args.sample_every and ((step > 0 and step % args.sample_every == 0) or last_step):
                ids = generate(model, config, T, args.gen_tokens, sampler)
                out(f"generating:\n---\n{tokenizer.decode(ids)}\n---")
            if args.checkpoint_every and ((step > 0 and step % args.checkpoint_every == 0) or last_step) \
                    and step != resume_step:
                model_path, state_path, done_path = _checkpoint_paths(outdir, step)
                write_checkpoint(model_path, config, model.params())
                m, v = model.optimizer_state()
                write_state(state_path, step, B, T, grad_accum, train_loader.position, sampler.state, m, v)
                with atomic_write(done_path):
                    pass
                if args.keep_last:
                    delete_old_checkpoints(outdir, args.keep_last)
                out(f"checkpoint {step} -> {outdir}")
            result.last_step = step
            if last_step or step == args.stop_at:
                break

            t0 = time.perf_counter()
            model.zero_grad()
            loss = 0.0
            for _ in range(grad_accum):
                loss += model.forward(*train_loader.next_batch())
                model.backward()
            loss /= grad_accum
            lr = learning_rate(step, args, total_steps)
            settings = AdamWSettings(learning_rate=lr, beta1=args.beta1, beta2=args.beta2,
                                     eps=args.eps * grad_accum, weight_decay=args.weight_decay,
                                     decay_all=args.decay_all, grad_clip=args.grad_clip * grad_accum)
            norm = model.update(settings, step + 1) / grad_accum
            step_times.append(time.perf_counter() - t0)
            result.train_losses[step] = loss
            log.write(f"s:{step} trl:{loss:f} lr:{lr:.6e} norm:{norm:.4f}\n")
            log.flush()
            if not args.quiet:
                recent = step_times[1:][-20:] or step_times   # the first step pays one-time costs
                dt = sum(recent) / len(recent)
                out(f"step {step + 1:5d}/{total_steps} | loss {loss:.6f} | norm {norm:7.4f} | lr {lr:.2e} | "
                    f"{1000 * step_times[-1]:7.1f} ms | {args.total_batch_size / dt:8.0f} tok/s | "
                    f"eta {_format_eta(dt * (total_steps - step - 1))}")
    model.close()
    out(plot_losses(log_path, outdir / "loss.png"))
    return result


def main(argv=None):
    try:
        args = parse_args(argv)
        train(args)
    except UsageError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    except (FormatError, OSError) as e:   # a checkpoint being resumed from; an unwritable --output-dir
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ntrain: interrupted; every checkpoint with a DONE marker is complete (--resume continues "
              "from the newest)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
