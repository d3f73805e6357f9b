"""Training throughput of libllmc_cuda.so at GPT-2 d12, T=1024, against PyTorch on the same card.

    python3 -m tools.bench_cuda [--out DIR] [--batch-sizes 8,16,32,max] [--torch eager,compile] [--profile]

One step = forward + zero_grad + backward + AdamW update (2-D decay, clip 1.0), on fixed random tokens,
from llm.c's d12 init (reference.model.init_params, seed 42). Each configuration runs --warmup steps, then
--steps timed ones (each step ends in a host sync: the loss and the grad norm come back); the table gives
the median. tok/s = B*T / median step time. Memory: libllmc's device memory in use (cudaMemGetInfo, free
before the model minus free after the steps, so cuBLAS's workspace counts); PyTorch's peak allocated.
"max" is the largest B (from 128 down) whose allocation succeeds.
PyTorch baselines: reference/torch_gpt2.py, eager fp32, eager TF32 (both with explicit attention, as
nanoGPT without flash) and torch.compile fp32 and TF32 with F.scaled_dot_product_attention(is_causal=True).
Writes bench_cuda.json and bench_cuda.md under --out.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

try:
    import torch
except ImportError:     # a CLI: say what is missing instead of a traceback
    sys.exit("tools.bench_cuda needs PyTorch with CUDA for its baselines: pip install -e '.[torch]' on a GPU machine")

from backends.registry import get_backend
from native.binding import LlmcError
from reference.adamw import AdamWSettings
from reference.model import GPT2Config, init_params

T = 1024
SETTINGS = AdamWSettings(learning_rate=6e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay_all=False,
                         grad_clip=1.0)
MAX_B_CANDIDATES = (128, 112, 96, 88, 80, 72, 64, 56, 48, 40, 32)
LLMC_ERR_ALLOC = 4   # llmc.h


def batch(config, B, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (B, T + 1)).astype(np.int32)
    return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


def time_steps(step, warmup, steps):
    """Median seconds per step; step() must return only after the device is done."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def free_bytes():
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def bench_llmc(backend, config, params, B, warmup, steps):
    inputs, targets = batch(config, B)
    free_before = free_bytes()
    model = backend.model(config, params, B, T)
    losses = []
    t = [0]

    def step():
        losses.append(model.forward(inputs, targets))
        model.zero_grad()
        model.backward()
        t[0] += 1
        model.update(SETTINGS, t[0])

    try:
        median, times = time_steps(step, warmup, steps)
        used = free_before - free_bytes()
    finally:
        model.close()
    return dict(median_s=median, times_s=times, memory_gib=used / 2**30, first_loss=losses[0], last_loss=losses[-1])


def bench_torch(config, params, B, tf32, compiled, warmup, steps):
    from reference.torch_gpt2 import AdamW, from_flat
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    inputs, targets = (torch.from_numpy(a).long().cuda() for a in batch(config, B))
    model = from_flat(config, params, dtype=torch.float32, device="cuda", flash=compiled)
    optimizer = AdamW(model, SETTINGS)
    forward = torch.compile(model) if compiled else model
    losses = []

    def step():
        optimizer.zero_grad()
        loss = forward(inputs, targets)
        loss.backward()
        optimizer.step()             # returns the grad norm via .item(): a host sync, as libllmc's update
        losses.append(loss.item())

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        median, times = time_steps(step, warmup, steps)
        peak = torch.cuda.max_memory_allocated()
    finally:
        del model, optimizer, forward
        torch.cuda.empty_cache()
        torch._dynamo.reset()
    return dict(median_s=median, times_s=times, memory_gib=peak / 2**30, first_loss=losses[0], last_loss=losses[-1])


def profile_llmc(backend, config, params, B, out_dir):
    """Per-kernel device time of one libllmc step (CUPTI sees every kernel of the process)."""
    from torch.profiler import ProfilerActivity, profile
    inputs, targets = batch(config, B)
    model = backend.model(config, params, B, T)
    for t in (1, 2):
        model.forward(inputs, targets)
        model.zero_grad()
        model.backward()
        model.update(SETTINGS, t)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model.forward(inputs, targets)
        model.zero_grad()
        model.backward()
        model.update(SETTINGS, 3)
    model.close()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
    path = os.path.join(out_dir, f"profile_{backend.name}_B{B}.txt")
    with open(path + ".tmp", "w") as f:
        f.write(table)
    os.replace(path + ".tmp", path)
    print(table)


def row(impl, precision, B, result):
    r = dict(implementation=impl, precision=precision, B=B, T=T)
    if "error" in result:
        r.update(error=result["error"])
    else:
        r.update(ms_per_step=result["median_s"] * 1e3, tokens_per_s=B * T / result["median_s"],
                 memory_gib=result["memory_gib"], first_loss=result["first_loss"], last_loss=result["last_loss"],
                 times_ms=[x * 1e3 for x in result["times_s"]])
    print(format_row(r), flush=True)
    return r


def format_row(r):
    if "error" in r:
        return f"| {r['implementation']} | {r['precision']} | {r['B']} | - | - | - | {r['error']} |"
    return (f"| {r['implementation']} | {r['precision']} | {r['B']} | {r['ms_per_step']:.1f} | "
            f"{r['tokens_per_s'] / 1e3:.1f}K | {r['memory_gib']:.1f} | loss {r['first_loss']:.3f} -> "
            f"{r['last_loss']:.3f} |")


HEADER = ("| implementation | precision | B | ms/step | tok/s | memory GiB | note |\n"
          "|---|---|---|---|---|---|---|")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out")
    parser.add_argument("--batch-sizes", default="8,16,32,max")
    parser.add_argument("--precisions", default="tf32,fp32")
    parser.add_argument("--torch", default="eager,compile", help="PyTorch baselines to run ('' for none)")
    parser.add_argument("--torch-batch-sizes", default="8,16,32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="per-kernel times of one TF32 step at B=16")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    config = GPT2Config.from_descriptor("d12")
    params = init_params(config, seed=42)
    device = torch.cuda.get_device_name()
    print(f"device: {device}; d12 T={T}; {config.num_parameters} parameters", flush=True)
    print(HEADER)
    rows = []
    backends = {"tf32": get_backend("cuda-tf32"), "fp32": get_backend("cuda")}
    for precision in args.precisions.split(","):
        backend = backends[precision]
        for b in args.batch_sizes.split(","):
            candidates = MAX_B_CANDIDATES if b == "max" else (int(b),)
            for B in candidates:
                try:
                    result = bench_llmc(backend, config, params, B, args.warmup, args.steps)
                except LlmcError as e:
                    if b == "max" and e.code == LLMC_ERR_ALLOC:
                        continue
                    result = dict(error=str(e).splitlines()[0][:120])
                rows.append(row("libllmc", precision, B, result))
                break
    if args.profile:
        profile_llmc(backends["tf32"], config, params, 16, args.out)
    baselines = [b for b in args.torch.split(",") if b]
    torch_runs = [("eager", "fp32", False, False), ("eager", "tf32", True, False),
                  ("compile", "fp32", False, True), ("compile", "tf32", True, True)]
    for name, precision, tf32, compiled in torch_runs:
        if name not in baselines:
            continue
        label = "PyTorch compile+SDPA" if compiled else "PyTorch eager"
        for B in (int(b) for b in args.torch_batch_sizes.split(",")):
            try:
                result = bench_torch(config, params, B, tf32, compiled, args.warmup, args.steps)
            except torch.cuda.OutOfMemoryError:
                result = dict(error="out of memory")
                torch.cuda.empty_cache()
            rows.append(row(label, precision, B, result))
    report = dict(device=device, model="d12", T=T, settings=SETTINGS.__dict__, warmup=args.warmup,
                  steps=args.steps, command="python3 -m tools.bench_cuda " + " ".join(argv or sys.argv[1:]),
                  rows=rows)
    for name, text in (("bench_cuda.json", json.dumps(report, indent=1)),
                       ("bench_cuda.md", f"Device: {device}\n\n{HEADER}\n" + "\n".join(map(format_row, rows)) + "\n")):
        path = os.path.join(args.out, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    print(f"\nDevice: {device}\n{HEADER}\n" + "\n".join(map(format_row, rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
