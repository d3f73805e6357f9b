"""Train GPT-2 on any backend with llm.c's training loop: python -m tools.train --backend cpu --model d6

The loop is train_gpt2.cu's: for step = 0..steps (inclusive): val loss every --val-every steps and at
the last step; a sample every --sample-every steps (step > 0) and at the last step; a checkpoint every
--checkpoint-every steps (step > 0) and at the last step; then, unless it is the last step, one
optimizer step of --total-batch-size tokens (grad_accum = total / (B*T*world_size) micro-batches) at the
scheduled learning rate (reference.adamw.LearningRateSchedule), logged as
`s:STEP trl:LOSS lr:LR norm:NORM` (val: `s:STEP tel:LOSS`) in OUTPUT_DIR/main.log. With matplotlib
installed the end of a run draws OUTPUT_DIR/loss.png (tools.plot_losses).

Data (reference.data.DataLoader, llm.c's loader): --train-data and --val-data are token files or globs of
shards. The train batches are shuffled as llm.c shuffles them (its mt19937, seeded 42 + rank; --no-shuffle
reads them in file order); validation always reads in order. --rank / --world-size (default: what the
launcher set: torchrun-style RANK / WORLD_SIZE, or mpirun's; else 0 / 1) choose this process's disjoint
slice of every sample.

Data parallelism, one process per GPU, as llm.c: launched by `python -m tools.launch --nproc N -- python -m
tools.train ...`, `mpirun -np N python -m tools.train ...` or torchrun's variables. Each rank runs on GPU
LOCAL_RANK, rank 0 makes the NCCL id and --rendezvous shares it (tcp: MASTER_ADDR:MASTER_PORT; file:PATH;
mpi), every rank's model joins (--zero-stage 0: all-reduce; 1: ZeRO-1, AdamW's state sharded), and each
update averages the gradients over the ranks. Losses are averaged over the ranks; rank 0 logs, validates,
samples and writes the model; every rank writes its own data loader's place (state_STEP_rankR.bin), so a
resume restores every rank. A backend that cannot join (no NCCL, the CPU backends) trains each rank alone
on its slice.

Gradient accumulation: every backward() seeds its loss gradient with 1/(B*T) and accumulates, so after
grad_accum micro-batches the gradient is grad_accum times the gradient of the whole batch's mean loss.
AdamW is scale-free up to eps, so the update runs on that sum with eps and the clipping threshold
multiplied by grad_accum: m and v then hold grad_accum and grad_accum^2 times their usual values, and
the update is the one from the averaged gradient, exactly in real arithmetic and bit for bit when
grad_accum is a power of two (scaling by it is exact in binary floating point). This needs no
grad-scale argument in the backends' update(). The printed norm is divided back.

Checkpoints: OUTPUT_DIR/model_STEP.bin (llm.c's model file), state_STEP.bin (reference.formats' trainer
state: step, AdamW m and v, the sampler's and the train loader's state) and DONE_STEP, written atomically
in that order (reference.formats.write_training_checkpoint), so a crash or Ctrl-C at any point leaves every
DONE-marked step complete. --keep-last N deletes all but the newest N. --resume continues from the newest
DONE step with the same B, T, total batch size and data settings: the losses from there on equal an
uninterrupted run's bit for bit on a deterministic backend.

Example (cpu backend, 2 cores: about 2 minutes when they are not shared, val loss 10.87 -> 5.48, then a sample):
    python -m tools.train --backend cpu --threads 2 --model L4-NH4-C128 -B 8 -T 64 --steps 600 --lr 2e-3 \
        --warmup 20 --final-lr-frac 0.1 --val-every 50 --val-batches 10 --sample-every 300 --output-dir out/shakespeare

Exit status 2 with a one-line message for a bad argument or input file (nothing is created then), 130
on Ctrl-C.
"""

import argparse
from dataclasses import dataclass, field
import os
from pathlib import Path
import re
import sys
import time

import numpy as np

from backends.base import BackendUnavailable
from backends.distributed import RendezvousError, keep_multicast_off, process_group, share_id
from backends.registry import get_backend
from reference import tokenizer
from reference.adamw import SCHEDULES, AdamWSettings, LearningRateSchedule
from reference.data import DataLoader
from reference.formats import (
    FormatError,
    TrainerState,
    atomic_write,
    checkpoint_paths,
    delete_old_checkpoints,
    newest_checkpoint,
    read_checkpoint,
    read_trainer_state,
    write_rank_state,
    write_training_checkpoint,
)
from reference.model import GPT2Config, init_params
from reference.sampling import Sampler, generate
from tools.options import Parser, UsageError, add_backend_option
from tools.plot_losses import plot_losses
from tools.prepare_data import ensure_tinyshakespeare


def parse_args(argv):
    p = Parser(
        prog="python -m tools.train",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_backend_option(p, default="cpu", single=True)
    p.add_argument(
        "--model",
        default="d6",
        help="an llm.c checkpoint .bin, or a random init: d6, d12, ... or L4-NH4-C128[-V..][-T..]",
    )
    p.add_argument("--seed", type=int, default=42, help="random-init seed (descriptor models)")
    p.add_argument(
        "--train-data",
        help="llm.c token file or glob of shards, quoted (default: tiny Shakespeare, prepared on first use)",
    )
    p.add_argument("--val-data", help="llm.c token file or glob of shards (default: tiny Shakespeare val)")
    p.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shuffle the train batches as llm.c does (validation is never shuffled)",
    )
    p.add_argument("--rank", type=int, help="this process's slice of the data (default: $RANK, else 0)")
    p.add_argument("--world-size", type=int, help="processes sharing the data (default: $WORLD_SIZE, else 1)")
    p.add_argument(
        "--zero-stage",
        type=int,
        choices=(0, 1),
        default=0,
        help="data parallelism: 0 all-reduces the gradients, 1 shards AdamW's state (ZeRO-1)",
    )
    p.add_argument(
        "--rendezvous",
        default="tcp",
        metavar="tcp|file:PATH|mpi",
        help="how rank 0's NCCL id reaches the other ranks (backends/distributed.py)",
    )
    p.add_argument("-B", "--batch-size", type=int, default=4, help="micro-batch size")
    p.add_argument("-T", "--seq-len", type=int, default=64, help="sequence length")
    p.add_argument(
        "--total-batch-size",
        type=int,
        help="tokens per optimizer step over all processes (default "
        "B*T*world_size); a multiple of that, the rest is "
        "gradient accumulation",
    )
    p.add_argument("--steps", type=int, default=-1, help="optimizer steps (-1: one epoch of the train data)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="decay after warmup")
    p.add_argument("--warmup", type=int, default=0, help="linear warmup steps")
    p.add_argument("--final-lr-frac", type=float, default=1.0, help="final lr as a fraction of --lr")
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--decay-all",
        action="store_true",
        help="weight decay on every parameter (llm.c CPU); default: 2-D tensors only (PyTorch, llm.c CUDA)",
    )
    p.add_argument("--grad-clip", type=float, default=1.0, help="global-norm clip threshold (<= 0: off)")
    p.add_argument("--val-every", type=int, default=20, help="val loss every N steps (0: never)")
    p.add_argument("--val-batches", type=int, default=20, help="val batches per evaluation")
    p.add_argument("--sample-every", type=int, default=20, help="print a sample every N steps (0: never)")
    p.add_argument("--gen-tokens", type=int, default=64, help="tokens per sample")
    p.add_argument("--output-dir", default="out/train", help="main.log, loss.png and checkpoints")
    p.add_argument("--checkpoint-every", type=int, default=0, help="checkpoint every N steps and at the end (0: never)")
    p.add_argument("--keep-last", type=int, default=0, help="delete all but the newest N checkpoints (0: keep all)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in --output-dir (--model is then not read)",
    )
    p.add_argument(
        "--stop-at", type=int, help="end this run at that step (after its checkpoint), as an interruption would"
    )
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
    try:
        group = process_group()
    except RendezvousError as e:
        raise UsageError(str(e)) from e
    if args.world_size is None:
        args.world_size = group.world_size
    if args.rank is None:
        args.rank = group.rank
    args.local_rank = group.local_rank if (group.rank, group.world_size) == (args.rank, args.world_size) else 0
    if args.world_size <= 0:
        raise UsageError(f"--world-size: must be positive, got {args.world_size}")
    if not 0 <= args.rank < args.world_size:
        raise UsageError(f"--rank: {args.rank} is outside [0, world size {args.world_size})")
    tokens_per_micro_step = args.batch_size * args.seq_len * args.world_size
    if args.total_batch_size is None:
        args.total_batch_size = tokens_per_micro_step
    if args.total_batch_size <= 0 or args.total_batch_size % tokens_per_micro_step:
        raise UsageError(
            f"--total-batch-size: {args.total_batch_size} is not a positive multiple of "
            f"B*T*world_size = {tokens_per_micro_step}"
        )
    return args


@dataclass
class TrainResult:
    train_losses: dict = field(default_factory=dict)  # step -> mean loss of that step's batch (float)
    val_losses: dict = field(default_factory=dict)  # step -> mean val loss
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


def _data_loader(pattern, flag, args, config, shuffle):
    try:
        return DataLoader(
            pattern, args.batch_size, args.seq_len, args.rank, args.world_size, shuffle, config.vocab_size
        )
    except (FileNotFoundError, FormatError) as e:
        raise UsageError(f"{flag}: {e}") from e


def _format_eta(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def train(args, out=print):
    """Every input is read and checked before OUTPUT_DIR is created or written."""
    outdir = Path(args.output_dir)
    B, T = args.batch_size, args.seq_len
    grad_accum = args.total_batch_size // (B * T * args.world_size)

    # one process per rank, started by a launcher: the ranks train one model together (data parallelism); else
    # --rank / --world-size only choose this process's slice of the data, and it trains alone
    launched = args.world_size > 1 and process_group().world_size == args.world_size
    state_rank = args.rank if launched else 0
    state = None
    if args.resume:
        if not outdir.is_dir():
            raise UsageError(f"--resume: {outdir} is not a directory")
        resume_step = newest_checkpoint(outdir)
        if resume_step is None:
            raise UsageError(f"--resume: no complete checkpoint (DONE_*) in {outdir}")
        model_path, state_path, _ = checkpoint_paths(outdir, resume_step, state_rank)
        config, params = read_checkpoint(model_path)
        state = read_trainer_state(state_path, config.num_parameters)
        if (state.B, state.T, state.grad_accum) != (B, T, grad_accum):
            raise UsageError(
                f"--resume: {state_path} was written with B={state.B}, T={state.T}, "
                f"grad_accum={state.grad_accum}; this run has B={B}, T={T}, grad_accum={grad_accum}"
            )
        if args.stop_at is not None and args.stop_at < resume_step:
            raise UsageError(f"--stop-at: step {args.stop_at} is before the resumed step {resume_step}")
    else:
        config, params = _load_model_source(args.model, args.seed)
    if T > config.max_seq_len:
        raise UsageError(f"-T: {T} exceeds the model's max_seq_len {config.max_seq_len}")

    if args.train_data is None or args.val_data is None:
        val_default, train_default = ensure_tinyshakespeare()
    train_loader = _data_loader(args.train_data or str(train_default), "--train-data", args, config, args.shuffle)
    val_loader = _data_loader(args.val_data or str(val_default), "--val-data", args, config, False)
    if state is not None:
        try:
            train_loader.restore(state.loader)
        except ValueError as e:
            raise UsageError(f"--resume: {state_path}: {e}") from e
    val_batches = min(args.val_batches, val_loader.num_batches)
    total_steps = args.steps if args.steps >= 0 else train_loader.num_batches // grad_accum
    schedule = LearningRateSchedule(args.lr, total_steps, args.warmup, args.final_lr_frac, args.schedule)
    can_sample = config.vocab_size <= tokenizer.VOCAB_SIZE

    if launched:
        keep_multicast_off()
    try:
        backend = get_backend(args.backend, device=args.local_rank if launched else None)
    except (BackendUnavailable, ValueError) as e:
        raise UsageError(f"--backend {args.backend}: {e}") from e
    if launched and not backend.data_parallel:
        raise UsageError(
            f"--backend {args.backend}: cannot average gradients over {args.world_size} processes "
            "(data parallelism needs a CUDA backend built with NCCL); to train each rank alone on its "
            "slice, start them without a launcher, with --rank, --world-size and an --output-dir each"
        )
    data_parallel = launched
    if args.threads is not None:
        library = getattr(backend, "library", None)  # native and lib: backends; a lib: port may lack the symbol
        if library is None or not library.has("llmc_set_num_threads"):
            raise UsageError(f"--threads: the {args.backend} backend has no thread setting")
        backend.set_num_threads(args.threads)

    outdir.mkdir(parents=True, exist_ok=True)
    model = backend.model(config, params, B, T)
    if data_parallel:
        group = process_group()
        try:
            unique_id = share_id(group, backend.dist_unique_id, args.rendezvous)
        except RendezvousError as e:
            raise UsageError(f"--rendezvous {args.rendezvous}: {e}") from e
        model.dist_join(unique_id, args.rank, args.world_size, args.zero_stage)

    def mean_over_ranks(value):
        return float(model.dist_mean([value])[0]) if data_parallel else value

    main = args.rank == 0 or not data_parallel  # logs, samples, writes the model
    if not main:
        out = _silent
    sampler = Sampler()
    log_path = outdir / "main.log"
    if state is None:
        start_step = 0
        if main:
            log_path.write_text("")
    else:
        start_step = state.step
        model.set_optimizer_state(state.m, state.v)
        sampler.state = state.sampler_state
        if main:
            kept = (
                [
                    line
                    for line in log_path.read_text().splitlines(keepends=True)
                    if int(re.match(r"s:(\d+)", line)[1]) < start_step
                ]
                if log_path.exists()
                else []
            )
            with atomic_write(log_path, "w") as f:
                f.writelines(kept)
        out(f"resuming from step {start_step} ({outdir})")
    out(
        f"model {args.model}: {config.num_parameters:,} parameters (L={config.num_layers}, NH={config.num_heads}, "
        f"C={config.channels}, V={config.vocab_size}) | backend {backend.name} | B={B} T={T} "
        f"grad_accum={grad_accum} | {total_steps} steps | train {train_loader.num_tokens:,} tokens in "
        f"{len(train_loader.paths)} shard(s), {'shuffled' if args.shuffle else 'in order'}, rank {args.rank} of "
        f"{args.world_size}{f', data parallel (ZeRO-{args.zero_stage})' if data_parallel else ''} | val "
        f"{val_batches} batches"
    )

    result = TrainResult()
    step_times = []
    with open(log_path if main else os.devnull, "a") as log:
        for step in range(start_step, total_steps + 1):
            last_step = step == total_steps
            if args.val_every and (step % args.val_every == 0 or last_step):
                val_loader.reset()
                val_loss = sum(model.forward(*val_loader.next_batch()) for _ in range(val_batches)) / val_batches
                val_loss = mean_over_ranks(val_loss)
                result.val_losses[step] = val_loss
                log.write(f"s:{step} tel:{val_loss:f}\n")
                log.flush()
                out(f"val loss {val_loss:.6f}")
            if (
                main
                and can_sample
                and args.sample_every
                and ((step > 0 and step % args.sample_every == 0) or last_step)
            ):
                ids = generate(model, config, T, args.gen_tokens, sampler)
                out(f"generating:\n---\n{tokenizer.decode(ids)}\n---")
            if (
                args.checkpoint_every
                and ((step > 0 and step % args.checkpoint_every == 0) or last_step)
                and step != start_step
            ):
                m, v = model.optimizer_state()  # collective under ZeRO-1: every rank asks
                trainer_state = TrainerState(step, B, T, grad_accum, sampler.state, m, v, train_loader.state())
                if not main:
                    write_rank_state(outdir, args.rank, trainer_state)
                if data_parallel:
                    mean_over_ranks(0.0)  # every rank's state is written before rank 0 marks DONE
                if main:
                    write_training_checkpoint(outdir, config, model.params(), trainer_state)
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
            loss = mean_over_ranks(loss / grad_accum)
            lr = schedule.at(step)
            settings = AdamWSettings(
                learning_rate=lr,
                beta1=args.beta1,
                beta2=args.beta2,
                eps=args.eps * grad_accum,
                weight_decay=args.weight_decay,
                decay_all=args.decay_all,
                grad_clip=args.grad_clip * grad_accum,
            )
            norm = model.update(settings, step + 1) / grad_accum
            step_times.append(time.perf_counter() - t0)
            result.train_losses[step] = loss
            log.write(f"s:{step} trl:{loss:f} lr:{lr:.6e} norm:{norm:.4f}\n")
            log.flush()
            if not args.quiet:
                recent = step_times[1:][-20:] or step_times  # the first step pays one-time costs
                dt = sum(recent) / len(recent)
                out(
                    f"step {step + 1:5d}/{total_steps} | loss {loss:.6f} | norm {norm:7.4f} | lr {lr:.2e} | "
                    f"{1000 * step_times[-1]:7.1f} ms | {args.total_batch_size / args.world_size / dt:8.0f} tok/s | "
                    f"eta {_format_eta(dt * (total_steps - step - 1))}"
                )
    model.close()
    if main:
        out(plot_losses(log_path, outdir / "loss.png"))
    return result


def _silent(line):
    """The print of a data-parallel rank other than 0."""


def main(argv=None):
    try:
        args = parse_args(argv)
        train(args)
    except UsageError as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    except (FormatError, OSError) as e:  # a checkpoint being resumed from; an unwritable --output-dir
        print(f"train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\ntrain: interrupted; every checkpoint with a DONE marker is complete (--resume continues "
            "from the newest)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
