"""Times libllmc training steps phase by phase, with the process's peak memory.

    python -m native.bench_step [--backend cpu] [--model d12] [-B 4] [-T 64] [--threads 2] [--steps 6]
                                [--checkpoint PATH]

A step is forward (with targets) + zero_grad + backward + update (llm.c's test_gpt2.c AdamW). The
first step touches every page (gradients, AdamW state) and is reported apart; the summary is the
median of the others. Peak RSS is the whole process's (resource.getrusage), Python included.
"""
import argparse
import resource
import time

import numpy as np

from native.binding import native_backend
from reference.adamw import TEST_GPT2_SETTINGS, AdamWSettings
from reference.model import GPT2Config, init_params

PHASES = ("forward", "zero_grad", "backward", "update")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cpu", choices=("cpu", "cuda", "cuda-tf32"))
    ap.add_argument("--model", default="d12", help="descriptor, e.g. d12 or L2-NH4-C64-V256-T64")
    ap.add_argument("--checkpoint", help="an llm.c model file instead of the random init of --model")
    ap.add_argument("-B", type=int, default=4)
    ap.add_argument("-T", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()

    backend = native_backend(args.backend)
    backend.set_num_threads(args.threads)
    if args.checkpoint:
        model = backend.model_from_checkpoint(args.checkpoint, args.B, args.T)
    else:
        params = init_params(GPT2Config.from_descriptor(args.model), seed=0)
        model = backend.model(GPT2Config.from_descriptor(args.model), params, args.B, args.T)
        del params   # the model holds its own copy
    config = model.config
    rng = np.random.default_rng(0)
    x = rng.integers(0, config.vocab_size, (args.B, args.T)).astype(np.int32)
    y = rng.integers(0, config.vocab_size, (args.B, args.T)).astype(np.int32)
    settings = AdamWSettings(**TEST_GPT2_SETTINGS)

    rows = []
    for step in range(args.steps):
        cpu0, t = time.process_time(), [time.perf_counter()]
        loss = model.forward(x, y)
        t.append(time.perf_counter())
        model.zero_grad()
        t.append(time.perf_counter())
        model.backward()
        t.append(time.perf_counter())
        model.update(settings, step + 1)
        t.append(time.perf_counter())
        ms = [1e3 * (b - a) for a, b in zip(t, t[1:])]
        rows.append([sum(ms), *ms, 1e3 * (time.process_time() - cpu0)])
        print(f"step {step}: loss {loss:.6f}  total {sum(ms):7.1f} ms  "
              + "  ".join(f"{name} {v:6.1f}" for name, v in zip(PHASES, ms)) + f"  (cpu {rows[-1][-1]:.0f} ms)")
    med = np.median(np.array(rows[1:] or rows), axis=0)
    flops = args.B * args.T * config.flops_per_token(args.T)   # forward + backward
    print(f"{backend.name} {args.model if not args.checkpoint else args.checkpoint} B={args.B} T={args.T} "
          f"threads={args.threads}: median step {med[0]:.1f} ms ("
          + ", ".join(f"{name} {v:.1f}" for name, v in zip(PHASES, med[1:5]))
          + f"), cpu {med[5]:.0f} ms, {flops / med[0] / 1e6:.0f} GFLOP/s")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(backend.description)
    model.close()


if __name__ == "__main__":
    main()
