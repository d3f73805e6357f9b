"""Data-parallel training throughput at GPT-2 d12, T=1024: libllmc over NCCL against PyTorch DDP, on 1 and N GPUs.

    python3 -m tools.bench_dp [--gpus 1,2] [--precision bf16] [-B 32] [--zero 0,1] [--torch] [--report-json PATH]

Every configuration runs as its own set of processes, one per GPU, started by tools.launch's launcher
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT; NVLink multicast off): libllmc with llmc_dist_join
(ZeRO-0 all-reduce or ZeRO-1), and PyTorch as a nanoGPT user runs it under torchrun: DDP around the
torch.compile'd model, autocast bf16, SDPA flash attention, fused AdamW, clip 1.0 (tools/bench_cuda.py's bf16
baseline). B is per GPU, so N GPUs process N times the tokens of one; tok/s counts all of them, and the
scaling is tok/s on N GPUs over tok/s on 1 in the same call. Memory: device memory per GPU (rank 0's).
"""

import argparse
import json
import os
import sys
import tempfile

from backends.distributed import keep_multicast_off, launch_local, process_group, share_id
from conformance.report import write_text
from tools.options import Parser, add_report_options, run_main

PRECISION_BACKENDS = {"bf16": "cuda-bf16", "tf32": "cuda-tf32", "fp32": "cuda"}


# ----------------------------------------------------------------------------- one rank
def rank_llmc(args):
    import torch

    from backends.native import BUILTIN, NativeBackend
    from native.binding import library_path, load_library
    from reference.model import GPT2Config, init_params
    from tools.bench_cuda import SETTINGS, T, batch, free_bytes, time_steps

    group = process_group()
    torch.cuda.set_device(group.local_rank)  # the memory figures read this rank's GPU
    name = PRECISION_BACKENDS[args.precision]
    kind, precision, mode = BUILTIN[name]
    library = load_library(library_path(kind))
    library.set_device(group.local_rank)  # before anything touches the GPU
    backend = NativeBackend(library, name, precision, mode)
    config = GPT2Config.from_descriptor("d12")
    inputs, targets = batch(config, args.B, seed=group.rank)  # each rank its own slice of the data
    free_before = free_bytes()
    model = backend.model(config, init_params(config, seed=42), args.B, T)
    if group.world_size > 1:
        model.dist_join(share_id(group, library.dist_unique_id), group.rank, group.world_size, args.zero[0])
    t = [0]

    def step():
        model.forward(inputs, targets)
        model.zero_grad()
        model.backward()
        t[0] += 1
        model.update(SETTINGS, t[0])  # returns the global norm: a host sync, every rank agrees

    median, times = time_steps(step, args.warmup, args.steps)
    used = free_before - free_bytes()
    model.close()
    return dict(median_s=median, times_s=times, memory_gib=used / 2**30)


def rank_torch(args):
    import torch
    import torch.distributed as dist

    from reference.model import GPT2Config, init_params
    from tools.bench_cuda import batch, time_steps, torch_bf16_step

    group = process_group()
    torch.cuda.set_device(group.local_rank)
    if group.world_size > 1:
        dist.init_process_group("nccl", device_id=torch.device("cuda", group.local_rank))
    torch.backends.cuda.matmul.allow_tf32 = True
    config = GPT2Config.from_descriptor("d12")
    inputs, targets = (torch.from_numpy(a).long().cuda() for a in batch(config, args.B, seed=group.rank))
    wrap = None
    if group.world_size > 1:

        def wrap(module):
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=[group.local_rank])

    step = torch_bf16_step(config, init_params(config, seed=42), inputs, targets, lambda loss: None, wrap)
    torch.cuda.reset_peak_memory_stats()
    median, times = time_steps(step, args.warmup, args.steps)
    result = dict(median_s=median, times_s=times, memory_gib=torch.cuda.max_memory_allocated() / 2**30)
    if group.world_size > 1:
        dist.destroy_process_group()
    return result


def worker(args):
    keep_multicast_off()
    result = (rank_llmc if args.worker == "llmc" else rank_torch)(args)
    if process_group().is_main:
        write_text(args.worker_out, json.dumps(result))
    return 0


# ----------------------------------------------------------------------------- the table
def run_configuration(impl, gpus, args, argv_common):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.json")
        command = [sys.executable, "-m", "tools.bench_dp", *argv_common, "--worker", impl, "--worker-out", out]
        status = launch_local(command, nproc=gpus, timeout=args.timeout)
        if status != 0:
            return dict(error=f"exit status {status}")
        with open(out) as f:
            return json.load(f)


def bench(args):
    if args.worker:
        return worker(args)
    import torch

    from reference.model import GPT2Config
    from tools.bench_cuda import T, flops_per_token, peak_flops

    device = torch.cuda.get_device_name()
    config = GPT2Config.from_descriptor("d12")
    rows = []
    configurations = [("llmc", g, z) for z in args.zero for g in args.gpus if g > 1 or z == args.zero[0]]
    configurations += [("torch", g, None) for g in args.gpus] if args.torch else []
    for impl, gpus, zero in configurations:
        common = [
            "--precision",
            args.precision,
            "-B",
            str(args.B),
            "--warmup",
            str(args.warmup),
            "--steps",
            str(args.steps),
            "--zero",
            str(zero or 0),
        ]
        result = run_configuration(impl, gpus, args, common)
        row = dict(
            implementation="libllmc " + PRECISION_BACKENDS[args.precision]
            if impl == "llmc"
            else "PyTorch DDP bf16 (compile, flash, fused AdamW)",
            gpus=gpus,
            zero=zero if impl == "llmc" and gpus > 1 else None,
            B_per_gpu=args.B,
            T=T,
            **result,
        )
        if "median_s" in result:
            row["tokens_per_s"] = gpus * args.B * T / result["median_s"]
            peak = peak_flops(device)
            row["mfu"] = row["tokens_per_s"] * flops_per_token(config) / (gpus * peak) if peak else None
        rows.append(row)
        print(format_row(row), flush=True)
    for row in rows:
        one = next(
            (
                r
                for r in rows
                if r["implementation"] == row["implementation"] and r["gpus"] == 1 and "tokens_per_s" in r
            ),
            None,
        )
        if one and "tokens_per_s" in row:
            row["scaling"] = row["tokens_per_s"] / one["tokens_per_s"]
    report = dict(
        device=device,
        gpus_visible=torch.cuda.device_count(),
        model="d12",
        T=T,
        rows=rows,
        command="python3 -m tools.bench_dp " + " ".join(sys.argv[1:]),
    )
    table = "\n".join([HEADER] + [format_row(r) for r in rows]) + "\n"
    print(f"\nDevice: {device} x {torch.cuda.device_count()}\n{table}")
    if args.report_json:
        write_text(args.report_json, json.dumps(report, indent=1) + "\n")
    if args.report_md:
        write_text(args.report_md, f"Device: {device}\n\n{table}")
    return 0 if all("error" not in r for r in rows) else 1


HEADER = (
    "| implementation | GPUs | ZeRO | B/GPU | ms/step | tok/s | scaling | MFU | memory/GPU GiB |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def format_row(r):
    if "error" in r:
        return (
            f"| {r['implementation']} | {r['gpus']} | {r.get('zero') if r.get('zero') is not None else '-'} | "
            f"{r['B_per_gpu']} | {r['error']} | | | | |"
        )
    scaling = f"{r['scaling']:.3f}x" if "scaling" in r else "-"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
    zero = r["zero"] if r.get("zero") is not None else "-"
    return (
        f"| {r['implementation']} | {r['gpus']} | {zero} | {r['B_per_gpu']} | {1e3 * r['median_s']:.1f} | "
        f"{r['tokens_per_s'] / 1e3:.1f}K | {scaling} | {mfu} | {r['memory_gib']:.1f} |"
    )


def build_parser():
    p = Parser(prog="python3 -m tools.bench_dp", description=__doc__.splitlines()[0])
    p.add_argument(
        "--gpus",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="GPU counts to run (comma-separated)",
    )
    p.add_argument("--precision", choices=tuple(PRECISION_BACKENDS), default="bf16")
    p.add_argument("-B", type=int, default=32, help="batch per GPU")
    p.add_argument(
        "--zero",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 1],
        help="libllmc's ZeRO stages to run on more than one GPU",
    )
    p.add_argument("--torch", action="store_true", help="also PyTorch DDP on the same GPU counts")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--timeout", type=float, default=540, help="seconds per configuration")
    add_report_options(p)
    p.add_argument("--worker", choices=("llmc", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    return p


def main(argv=None):
    return run_main("tools.bench_dp", bench, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
