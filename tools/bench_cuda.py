"""Training throughput of libllmc_cuda.so at GPT-2 d12, T=1024, against PyTorch on the same card.

    python3 -m tools.bench_cuda [--report-json PATH] [--report-md PATH] [--precisions bf16,tf32,fp32]
                                [--batch-sizes 8,16,32,max] [--torch eager,compile,bf16] [--profile]

One step = forward + zero_grad + backward + AdamW update (2-D decay, clip 1.0), on fixed random tokens,
from llm.c's d12 init (reference.model.init_params, seed 42). Each configuration runs --warmup steps, then
--steps timed ones (each step ends in a host sync: the loss and the grad norm come back); the table gives
the median. tok/s = B*T / median step time. Memory: libllmc's device memory in use (cudaMemGetInfo, free
before the model minus free after the steps, so cuBLAS's workspace counts); PyTorch's peak allocated.
"max" is the largest B (from 128 down) whose allocation succeeds.
PyTorch baselines: reference/torch_gpt2.py, eager fp32, eager TF32 (both with explicit attention, as
nanoGPT without flash) and torch.compile fp32 and TF32 with F.scaled_dot_product_attention(is_causal=True);
"bf16" is PyTorch the way llm.c's train_gpt2.py trains: fp32 weights under autocast(bfloat16), torch.compile,
SDPA flash attention, fused AdamW, clip_grad_norm_(1.0).
MFU, as llm.c's: (6 N + 6 L C T) FLOP per token (N the parameters, Vp-padded), times tok/s, over the
card's dense bf16 peak (H100 / H200 SXM: 989 TFLOP/s) whatever the row's precision.
Writes the JSON and markdown reports (default out/bench_cuda.json and .md), a profile beside the JSON.
"""

import json
import os
import statistics
import sys
import time

import numpy as np

try:
    import torch
except ImportError:  # main says what is missing, after --help has had its answer
    torch = None

from backends.registry import get_backend
from conformance.report import write_text
from native.binding import ERROR_CODES, LlmcError
from reference.adamw import AdamWSettings
from reference.model import GPT2Config, init_params
from tools.options import Parser, add_report_options

T = 1024
SETTINGS = AdamWSettings(
    learning_rate=6e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, decay_all=False, grad_clip=1.0
)
MAX_B_CANDIDATES = (128, 112, 96, 88, 80, 72, 64, 56, 48, 40, 32)
LLMC_ERR_ALLOC = ERROR_CODES["LLMC_ERR_ALLOC"]
BACKENDS = {"bf16": "cuda-bf16", "tf32": "cuda-tf32", "fp32": "cuda"}
PEAK_BF16_FLOPS = {"H100": 989.4e12, "H200": 989.4e12}  # dense, SXM (the datasheets; llm.c's mfu.h for H100)


def peak_flops(device):
    """The card's dense bf16 peak, by a name in its device name; None where unknown."""
    return next((flops for name, flops in PEAK_BF16_FLOPS.items() if name in device), None)


def flops_per_token(config):
    """llm.c's count (gpt2_estimate_mfu): 6 per parameter, plus attention's 6 L C T."""
    return 6 * config.num_parameters + 6 * config.num_layers * config.channels * T


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
        optimizer.step()  # returns the grad norm via .item(): a host sync, as libllmc's update
        losses.append(loss.item())

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        median, times = time_steps(step, warmup, steps)
        peak = torch.cuda.max_memory_allocated()
    finally:  # the model and optimizer go with this frame; the next bench empties the cache first
        torch._dynamo.reset()
    return dict(median_s=median, times_s=times, memory_gib=peak / 2**30, first_loss=losses[0], last_loss=losses[-1])


def torch_bf16_step(config, params, inputs, targets, on_loss, wrap=None):
    """One PyTorch bf16 training step as llm.c's train_gpt2.py takes it (fp32 master weights under autocast
    bf16, torch.compile, SDPA flash attention, fused AdamW with decay on the 2-D tensors, clip 1.0) -> step().
    wrap: applied to the compiled model (DistributedDataParallel)."""
    from reference.torch_gpt2 import from_flat

    model = from_flat(config, params, dtype=torch.float32, device="cuda", flash=True)
    parameters = list(model.parameters())
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": SETTINGS.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=SETTINGS.learning_rate, betas=(SETTINGS.beta1, SETTINGS.beta2), eps=SETTINGS.eps, fused=True
    )
    forward = torch.compile(model)
    if wrap is not None:
        forward = wrap(forward)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
            loss = forward(inputs, targets)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(parameters, SETTINGS.grad_clip)
        optimizer.step()
        on_loss(loss.item())  # host syncs, as libllmc's step (train_gpt2.py prints both)
        norm.item()

    return step


def bench_torch_bf16(config, params, B, warmup, steps):
    """PyTorch as llm.c's train_gpt2.py runs it: fp32 master weights, autocast bf16, compile, flash SDPA,
    fused AdamW with decay on the 2-D tensors, gradient clipping at 1.0."""
    torch.backends.cuda.matmul.allow_tf32 = True  # train_gpt2.py --tensorcores=1: the few fp32 matmuls left
    torch.backends.cudnn.allow_tf32 = True
    inputs, targets = (torch.from_numpy(a).long().cuda() for a in batch(config, B))
    losses = []
    step = torch_bf16_step(config, params, inputs, targets, losses.append)

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        median, times = time_steps(step, warmup, steps)
        peak = torch.cuda.max_memory_allocated()
    finally:
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
    write_text(os.path.join(out_dir, f"profile_{backend.name}_B{B}.txt"), table)
    print(table)


def row(impl, precision, B, result, config, peak):
    r = dict(implementation=impl, precision=precision, B=B, T=T)
    if "error" in result:
        r.update(error=result["error"])
    else:
        tokens_per_s = B * T / result["median_s"]
        r.update(
            ms_per_step=result["median_s"] * 1e3,
            tokens_per_s=tokens_per_s,
            mfu=tokens_per_s * flops_per_token(config) / peak if peak else None,
            memory_gib=result["memory_gib"],
            first_loss=result["first_loss"],
            last_loss=result["last_loss"],
            times_ms=[x * 1e3 for x in result["times_s"]],
        )
    print(format_row(r), flush=True)
    return r


def format_row(r):
    if "error" in r:
        return f"| {r['implementation']} | {r['precision']} | {r['B']} | - | - | - | - | {r['error']} |"
    mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
    return (
        f"| {r['implementation']} | {r['precision']} | {r['B']} | {r['ms_per_step']:.1f} | "
        f"{r['tokens_per_s'] / 1e3:.1f}K | {mfu} | {r['memory_gib']:.1f} | loss {r['first_loss']:.3f} -> "
        f"{r['last_loss']:.3f} |"
    )


def ratios(rows):
    """libllmc bf16 over PyTorch bf16, per B both ran (the best of each where several)."""
    best = {}
    for r in rows:
        if "error" not in r and r["precision"] == "bf16":
            key = ("libllmc" if r["implementation"] == "libllmc" else "torch", r["B"])
            best[key] = max(best.get(key, 0.0), r["tokens_per_s"])
    lines = [
        f"B={B}: libllmc cuda-bf16 {ours / 1e3:.1f}K tok/s / PyTorch bf16 {best[('torch', B)] / 1e3:.1f}K = "
        f"{ours / best[('torch', B)]:.3f}x"
        for (who, B), ours in sorted(best.items())
        if who == "libllmc" and ("torch", B) in best
    ]
    if best:
        top = {
            who: max(v for (w, _), v in best.items() if w == who)
            for who in ("libllmc", "torch")
            if any(w == who for w, _ in best)
        }
        if len(top) == 2:
            lines.append(f"best B of each: {top['libllmc'] / top['torch']:.3f}x")
    return lines


HEADER = (
    "| implementation | precision | B | ms/step | tok/s | MFU | memory GiB | note |\n|---|---|---|---|---|---|---|---|"
)


def main(argv=None):
    parser = Parser(prog="python -m tools.bench_cuda", description=__doc__.splitlines()[0])
    add_report_options(parser, json_default="out/bench_cuda.json", md_default="out/bench_cuda.md")
    parser.add_argument("--batch-sizes", default="8,16,32,max")
    parser.add_argument("--precisions", default="bf16,tf32,fp32", help="libllmc rows: bf16, tf32, fp32")
    parser.add_argument("--torch", default="eager,compile,bf16", help="PyTorch baselines to run ('' for none)")
    parser.add_argument("--torch-batch-sizes", default="8,16,32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--profile", action="store_true", help="per-kernel times of one step of the first precision at --profile-batch"
    )
    parser.add_argument("--profile-batch", type=int, default=16)
    args = parser.parse_args(argv)
    if torch is None:
        sys.exit("tools.bench_cuda needs PyTorch with CUDA for its baselines: pip install -e '.[torch]' on a GPU")
    config = GPT2Config.from_descriptor("d12")
    params = init_params(config, seed=42)
    device = torch.cuda.get_device_name()
    peak = peak_flops(device)
    print(
        f"device: {device}; d12 T={T}; {config.num_parameters} parameters; "
        f"{flops_per_token(config) / 1e6:.1f} MFLOP per token; bf16 peak "
        f"{'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}",
        flush=True,
    )
    print(HEADER)
    rows = []
    precisions = [p for p in args.precisions.split(",") if p]
    backends = {p: get_backend(BACKENDS[p]) for p in precisions}
    for precision in precisions:
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
                rows.append(row("libllmc", precision, B, result, config, peak))
                break
    if args.profile and precisions:
        profile_llmc(
            backends[precisions[0]],
            config,
            params,
            args.profile_batch,
            os.path.dirname(os.path.abspath(args.report_json)),
        )
    baselines = [b for b in args.torch.split(",") if b]
    torch_runs = [
        ("eager", "fp32", False, False),
        ("eager", "tf32", True, False),
        ("compile", "fp32", False, True),
        ("compile", "tf32", True, True),
        ("bf16", "bf16", True, True),
    ]
    for name, precision, tf32, compiled in torch_runs:
        if name not in baselines:
            continue
        label = {
            "eager": "PyTorch eager",
            "compile": "PyTorch compile+SDPA",
            "bf16": "PyTorch autocast+compile+flash+fused AdamW",
        }[name]
        for B in (int(b) for b in args.torch_batch_sizes.split(",")):
            try:
                if name == "bf16":
                    result = bench_torch_bf16(config, params, B, args.warmup, args.steps)
                else:
                    result = bench_torch(config, params, B, tf32, compiled, args.warmup, args.steps)
            except torch.cuda.OutOfMemoryError:
                result = dict(error="out of memory")
                torch.cuda.empty_cache()
            rows.append(row(label, precision, B, result, config, peak))
    summary = ratios(rows)
    report = dict(
        device=device,
        model="d12",
        T=T,
        settings=SETTINGS.__dict__,
        warmup=args.warmup,
        steps=args.steps,
        command="python3 -m tools.bench_cuda " + " ".join(argv or sys.argv[1:]),
        flops_per_token=flops_per_token(config),
        peak_bf16_flops=peak,
        ratios=summary,
        rows=rows,
    )
    table = f"Device: {device}\n\n{HEADER}\n" + "\n".join(map(format_row, rows)) + "\n"
    table += "".join(f"\n{line}" for line in summary) + ("\n" if summary else "")
    write_text(args.report_json, json.dumps(report, indent=1) + "\n")
    write_text(args.report_md, table)
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
