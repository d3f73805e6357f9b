"""Time one GPT-2 training step on several backends in one run: python -m tools.bench --backend cpu reference torch

    python -m tools.bench --backend cpu reference torch --model d12 -B 4 -T 64 --steps 5 --threads 2 --report-json OUT

A step is llm.c's: forward (with the loss), zero_grad, backward, AdamW update (reference.adamw's
TEST_GPT2_SETTINGS for every backend, torch included). Each backend runs in a fresh subprocess
(python -m tools.bench --worker NAME), so its peak RSS is its own and its thread settings
(OMP/OPENBLAS/MKL_NUM_THREADS, set_num_threads, torch.set_num_threads) apply from the start; it
reports the median of --steps steps after --warmup untimed ones, per phase and in total.
`torch` is PyTorch eager in float32 (reference.torch_gpt2), the baseline: every time is also shown as a
ratio to it (to the reference when torch is not in the run or not installed).

Also measured, in the workers: each backend's matmul_forward (torch: F.linear) at the model's four
matmul shapes and the lm head, in GFLOP/s, whose best is the machine's measured sgemm peak that the
steps' GFLOP/s are reported as a ratio of; and, for --layers backends (default cpu), every kernel at the
model's shapes through backend.kernels, with its calls per step, so the table shows where a step's time goes.

Which BLAS kernels each backend ran is asked of the libraries in the worker (tools.blas_info):
OpenBLAS's core name (openblas_get_corename) for the cpu backend's scipy-openblas32 and numpy's own
OpenBLAS (the reference), MKL's code branch for PyTorch. OPENBLAS_CORETYPE in the environment
forces OpenBLAS's core whatever the CPU: the run then warns (stderr and the JSON's meta.warnings).
"""

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from reference.adamw import TEST_GPT2_SETTINGS, AdamWSettings
from reference.formats import atomic_write, read_checkpoint, write_checkpoint
from reference.model import GPT2Config, init_params
from tools import blas_info
from tools.options import add_report_options

PHASES = ("forward", "zero_grad", "backward", "update")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `-m tools.bench` imports
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ----------------------------------------------------------------------------- worker: training step
def _batch(config, B, T, seed=0):
    """A fixed batch of inputs and targets (the same in every worker)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, config.vocab_size, (B, T + 1)).astype(np.int32)
    return tokens[:, :-1].copy(), tokens[:, 1:].copy()


def _time_phases(phases, steps, warmup):
    """phases: name -> callable, run in PHASES order once per step -> {name: [seconds per step]} of the timed steps."""
    times = {name: [] for name in PHASES}
    for i in range(warmup + steps):
        for name in PHASES:
            t0 = time.perf_counter()
            phases[name]()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def backend_phases(model, config, B, T):
    """A model handle's training step on a fixed batch as {phase: callable}, run in PHASES order."""
    inputs, targets = _batch(config, B, T)
    settings = AdamWSettings(**TEST_GPT2_SETTINGS)
    t = [0]

    def update():
        t[0] += 1
        model.update(settings, t[0])

    return {
        "forward": lambda: model.forward(inputs, targets),
        "zero_grad": model.zero_grad,
        "backward": model.backward,
        "update": update,
    }


def torch_phases(config, params, B, T):
    """The same step on reference.torch_gpt2 (float32, eager) as {phase: callable}."""
    import torch

    from reference.torch_gpt2 import AdamW, from_flat

    model = from_flat(config, params, torch.float32)
    optimizer = AdamW(model, AdamWSettings(**TEST_GPT2_SETTINGS))
    inputs, targets = (torch.from_numpy(a.astype(np.int64)) for a in _batch(config, B, T))
    loss = [None]

    def forward():
        loss[0] = model(inputs, targets)

    return {
        "forward": forward,
        "zero_grad": optimizer.zero_grad,
        "backward": lambda: loss[0].backward(),
        "update": optimizer.step,
    }


# ----------------------------------------------------------------------------- worker: matmul peak, kernels
def matmul_shapes(config):
    """(label, OC, C, has_bias) of every matmul of a step's forward; the backward has twice their FLOPs."""
    C = config.channels
    return [
        ("qkv", 3 * C, C, True),
        ("attproj", C, C, True),
        ("fc", 4 * C, C, True),
        ("fcproj", C, 4 * C, True),
        ("lm_head", config.padded_vocab_size, C, False),
    ]


def _median_seconds(fn, repeats):
    fn()  # first call: page faults, library warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _matmul_gflops(matmul, config, B, T, repeats):
    """label -> GFLOP/s of matmul(out, inp, weight, bias) at the model's shapes."""
    rng = np.random.default_rng(1)
    result = {}
    for label, OC, C, has_bias in matmul_shapes(config):
        inp = rng.standard_normal((B, T, C), dtype=np.float32)
        weight = rng.standard_normal((OC, C), dtype=np.float32)
        bias = rng.standard_normal(OC, dtype=np.float32) if has_bias else None
        out = np.empty((B, T, OC), np.float32)
        seconds = _median_seconds(functools.partial(matmul, out, inp, weight, bias), repeats)
        result[label] = 2.0 * B * T * C * OC / seconds / 1e9
    return result


def _torch_matmul(torch):
    """matmul_forward's signature on F.linear, writing into out's memory."""
    linear = torch.nn.functional.linear

    def matmul(out, inp, weight, bias):
        torch.from_numpy(out).copy_(
            linear(torch.from_numpy(inp), torch.from_numpy(weight), None if bias is None else torch.from_numpy(bias))
        )

    return matmul


def kernel_calls(config, B, T):
    """(label, kernel name, calls per step, argument builder) for every kernel of a training step at
    the model's shapes; a builder returns fresh arrays (outputs zeroed), llm.c's argument order."""
    L, C, NH, V, Vp = config.num_layers, config.channels, config.num_heads, config.vocab_size, config.padded_vocab_size
    rng = np.random.default_rng(2)

    def randn(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)

    def zeros(*shape):
        return np.zeros(shape, np.float32)

    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    att = np.tril(np.ones((B, NH, T, T), np.float32))
    att /= att.sum(-1, keepdims=True)
    logits = randn(B, T, Vp)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs[..., V:] = 0
    probs /= probs.sum(-1, keepdims=True)
    mean, rstd = randn(B, T), np.ones((B, T), np.float32)
    calls = [
        ("encoder_forward", "encoder_forward", 1, lambda: (zeros(B, T, C), tokens, randn(Vp, C), randn(T, C))),
        (
            "layernorm_forward",
            "layernorm_forward",
            2 * L + 1,
            lambda: (zeros(B, T, C), zeros(B, T), zeros(B, T), randn(B, T, C), randn(C), randn(C)),
        ),
    ]
    for label, OC, IC, has_bias in matmul_shapes(config):
        n = 1 if label == "lm_head" else L
        bias = (lambda OC=OC: randn(OC)) if has_bias else (lambda: None)
        dbias = (lambda OC=OC: zeros(OC)) if has_bias else (lambda: None)
        calls.append(
            (
                f"matmul_forward {label}",
                "matmul_forward",
                n,
                lambda OC=OC, IC=IC, bias=bias: (zeros(B, T, OC), randn(B, T, IC), randn(OC, IC), bias()),
            )
        )
        calls.append(
            (
                f"matmul_backward {label}",
                "matmul_backward",
                n,
                lambda OC=OC, IC=IC, dbias=dbias: (
                    zeros(B, T, IC),
                    zeros(OC, IC),
                    dbias(),
                    randn(B, T, OC),
                    randn(B, T, IC),
                    randn(OC, IC),
                ),
            )
        )
    calls += [
        (
            "attention_forward",
            "attention_forward",
            L,
            lambda: (zeros(B, T, C), zeros(B, NH, T, T), zeros(B, NH, T, T), randn(B, T, 3 * C), NH),
        ),
        ("gelu_forward", "gelu_forward", L, lambda: (zeros(B, T, 4 * C), randn(B, T, 4 * C))),
        ("residual_forward", "residual_forward", 2 * L, lambda: (zeros(B, T, C), randn(B, T, C), randn(B, T, C))),
        ("softmax_forward", "softmax_forward", 1, lambda: (zeros(B, T, Vp), logits, V)),
        ("crossentropy_forward", "crossentropy_forward", 1, lambda: (zeros(B, T), probs, tokens)),
        (
            "crossentropy_softmax_backward",
            "crossentropy_softmax_backward",
            1,
            lambda: (zeros(B, T, Vp), np.full((B, T), 1.0 / (B * T), np.float32), probs, tokens, V),
        ),
        ("residual_backward", "residual_backward", 2 * L, lambda: (zeros(B, T, C), zeros(B, T, C), randn(B, T, C))),
        ("gelu_backward", "gelu_backward", L, lambda: (zeros(B, T, 4 * C), randn(B, T, 4 * C), randn(B, T, 4 * C))),
        (
            "attention_backward",
            "attention_backward",
            L,
            lambda: (
                zeros(B, T, 3 * C),
                zeros(B, NH, T, T),
                zeros(B, NH, T, T),
                randn(B, T, C),
                randn(B, T, 3 * C),
                att,
                NH,
            ),
        ),
        (
            "layernorm_backward",
            "layernorm_backward",
            2 * L + 1,
            lambda: (zeros(B, T, C), zeros(C), zeros(C), randn(B, T, C), randn(B, T, C), randn(C), mean, rstd),
        ),
        ("encoder_backward", "encoder_backward", 1, lambda: (zeros(Vp, C), zeros(T, C), randn(B, T, C), tokens)),
    ]
    return calls


def _kernel_times(kernels, config, B, T, repeats):
    """label -> {kernel, calls, ms (one call, median)}; kernels the backend lacks are left out."""
    result = {}
    for label, name, calls, build in kernel_calls(config, B, T):
        if not hasattr(kernels, name):
            continue
        args = build()  # accumulating kernels grow their outputs across repeats: harmless for timing
        seconds = _median_seconds(functools.partial(getattr(kernels, name), *args), repeats)
        result[label] = {"kernel": name, "calls": calls, "ms": 1000 * seconds}
    return result


def worker(args):
    load_before = os.getloadavg()[0]
    config = GPT2Config.from_descriptor(args.model)
    B, T = args.batch_size, args.seq_len
    if args.worker == "torch":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        _, params = read_checkpoint(args.worker_checkpoint)
        phases = torch_phases(config, params, B, T)
        description = f"PyTorch {torch.__version__} eager, float32, {torch.get_num_threads()} threads"
        matmul, kernels = _torch_matmul(torch), None
        blas = blas_info.torch_blas(torch)
    else:
        from backends.registry import get_backend

        backend = get_backend(args.worker)
        library = getattr(backend, "library", None)  # the reference has no thread setting of its own
        if args.threads and library is not None and library.has("llmc_set_num_threads"):
            backend.set_num_threads(args.threads)
        # built from the file by the backend itself: no copy of the parameters in Python counts
        # towards the training run's peak memory
        phases = backend_phases(backend.model_from_checkpoint(args.worker_checkpoint, B, T), config, B, T)
        description = backend.description or backend.name
        kernels = backend.kernels if backend.has_kernel("matmul_forward") else None
        matmul = kernels.matmul_forward if kernels else None
        # a native or lib: backend: the BLAS its library links (chosen when it loaded); the reference: numpy's
        blas = blas_info.openblas_info(library.path) if library is not None else blas_info.numpy_blas()
    times = _time_phases(phases, args.steps, args.warmup)
    # the training run's peak resident set, read before the matmul and kernel timings below allocate more
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is KiB on Linux
    step_ms = [1000 * sum(p) for p in zip(*times.values(), strict=True)]
    result = {
        "backend": args.worker,
        "description": description,
        "step_ms": statistics.median(step_ms),
        "phase_ms": {name: 1000 * statistics.median(t) for name, t in times.items()},
        "step_ms_all": step_ms,
        "load_avg_before": load_before,  # other work on the machine slows every number: say how much there was
        "peak_rss_mib": peak_rss_mib,
        "matmul_gflops": _matmul_gflops(matmul, config, B, T, args.kernel_repeats) if matmul else {},
        "blas": blas,
        "blas_env": {k: os.environ.get(k) for k in blas_info.FORCING_ENV},
    }
    if kernels is not None and args.worker in args.layers:
        result["layers"] = _kernel_times(kernels, config, B, T, args.kernel_repeats)
    with open(args.worker_out, "w") as f:
        json.dump(result, f)


# ----------------------------------------------------------------------------- parent
def cpu_model_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_worker(name, args, argv, checkpoint):
    """-> the worker's result dict, or {"backend", "error"} when it failed."""
    env = dict(os.environ)
    if args.threads:
        env.update({k: str(args.threads) for k in THREAD_ENV})
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [
            sys.executable,
            "-m",
            "tools.bench",
            *argv,
            "--worker",
            name,
            "--worker-out",
            out,
            "--worker-checkpoint",
            checkpoint,
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
        if proc.returncode != 0 or not os.path.exists(out):
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return {"backend": name, "error": lines[-1] if lines else f"exit status {proc.returncode}"}
        with open(out) as f:
            return json.load(f)


def summarize(results, config, B, T):
    """Adds tok/s, GFLOP/s, its ratio to the sgemm peak measured in the same run (share_of_peak) and the
    ratio to the baseline; -> (baseline, peak)."""
    ok = {r["backend"]: r for r in results if "error" not in r}
    baseline = "torch" if "torch" in ok else ("reference" if "reference" in ok else None)
    peak = max((g for r in ok.values() for g in r["matmul_gflops"].values()), default=None)
    flops_per_step = config.flops_per_token(T) * B * T
    for r in ok.values():
        seconds = r["step_ms"] / 1000
        r["tok_per_s"] = B * T / seconds
        r["gflops"] = flops_per_step / seconds / 1e9
        r["share_of_peak"] = r["gflops"] / peak if peak else None
        r["ratio_to_baseline"] = r["step_ms"] / ok[baseline]["step_ms"] if baseline else None
    return baseline, peak


def format_results(report):
    meta, results = report["meta"], report["results"]
    baseline = report["baseline"]
    lines = [
        f"{meta['model']} ({meta['num_parameters']:,} parameters), B={meta['B']} T={meta['T']}, "
        f"{meta['threads'] or 'default'} threads, median of {meta['steps']} steps after {meta['warmup']} "
        f"warm-up | {meta['cpu']}",
        f"{'backend':<12}{'ms/step':>10}{'x ' + (baseline or '-'):>14}{'tok/s':>9}{'GFLOP/s':>9}{'% peak':>8}"
        f"{'fwd':>9}{'bwd':>9}{'update':>9}{'peak RSS':>11}   BLAS kernel",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"{r['backend']:<12}  failed: {r['error']}")
            continue
        ph = r["phase_ms"]
        ratio = f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] is not None else "-"
        share = f"{100 * r['share_of_peak']:.1f}" if r["share_of_peak"] is not None else "-"
        lines.append(
            f"{r['backend']:<12}{r['step_ms']:>10.1f}{ratio:>14}{r['tok_per_s']:>9.0f}{r['gflops']:>9.1f}"
            f"{share:>8}{ph['forward']:>9.1f}{ph['backward']:>9.1f}{ph['update']:>9.1f}"
            f"{r['peak_rss_mib']:>8.0f} MiB   {blas_info.describe(r.get('blas'))}   "
            f"(min {min(r['step_ms_all']):.1f} ms, load {r['load_avg_before']:.2f})"
        )
    peak = report["matmul_peak_gflops"]
    if peak:
        lines.append(
            f"measured sgemm peak at these shapes: {peak:.1f} GFLOP/s (best matmul_forward / F.linear of any backend)"
        )
        lines += [
            f"  {r['backend']:<10} whole step {r['gflops']:.1f} GFLOP/s = {100 * r['share_of_peak']:.1f}% of that peak"
            for r in results
            if "error" not in r
        ]
    for r in results:
        if r.get("matmul_gflops"):
            lines.append(
                f"  {r['backend']:<10} matmul GFLOP/s: "
                + ", ".join(f"{k} {v:.1f}" for k, v in r["matmul_gflops"].items())
            )
    for r in results:
        if r.get("layers"):
            total = sum(x["ms"] * x["calls"] for x in r["layers"].values())
            lines.append(f"per-kernel time of {r['backend']} (one step's calls, kernels alone: {total:.1f} ms)")
            for label, x in sorted(r["layers"].items(), key=lambda kv: -kv[1]["ms"] * kv[1]["calls"]):
                ms = x["ms"] * x["calls"]
                lines.append(
                    f"  {label:<32}{x['calls']:>4} x {x['ms']:8.3f} ms = {ms:8.2f} ms  {100 * ms / total:5.1f}%"
                )
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--backend",
        action="extend",
        nargs="+",
        metavar="NAME",
        help="backend to time (repeatable; torch: PyTorch eager, the baseline); default: cpu reference torch",
    )
    p.add_argument("--model", default="d12", help="descriptor: d12, L4-NH4-C128, ...")
    p.add_argument("-B", "--batch-size", type=int, default=4)
    p.add_argument("-T", "--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--threads", type=int, default=2, help="threads per backend (0: library default)")
    p.add_argument("--layers", nargs="*", default=["cpu"], help="backends whose kernels are timed one by one")
    p.add_argument("--kernel-repeats", type=int, default=5, help="timed calls per kernel / matmul shape")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="fresh workers per backend, in alternation; each backend's fastest round is kept",
    )
    add_report_options(p, markdown=False)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--worker-checkpoint", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.backend = list(dict.fromkeys(args.backend or ["cpu", "reference", "torch"]))
    try:
        GPT2Config.from_descriptor(args.model)
    except ValueError as e:
        p.error(f"--model: {e}")
    for flag in ("batch_size", "seq_len", "steps", "kernel_repeats", "rounds"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')}: must be positive, got {getattr(args, flag)}")
    if args.warmup < 0 or args.threads < 0:
        p.error("--warmup and --threads must be >= 0")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    config = GPT2Config.from_descriptor(args.model)
    warning = blas_info.forced_core_warning()
    if warning:
        print(f"bench: warning: {warning}", file=sys.stderr)
    runs = {name: [] for name in args.backend}
    with tempfile.TemporaryDirectory() as tmp:  # every worker starts from the same llm.c checkpoint
        checkpoint = os.path.join(tmp, "model.bin")
        write_checkpoint(checkpoint, config, init_params(config, seed=42, dtype=np.float32))
        for round_ in range(args.rounds):
            for name in args.backend:  # alternating, so a burst of other work hits every backend alike
                print(f"timing {name} (round {round_ + 1}/{args.rounds}) ...", file=sys.stderr, flush=True)
                runs[name].append(run_worker(name, args, argv, checkpoint))
    results = []
    for rounds in runs.values():  # each backend's fastest round
        ok = [r for r in rounds if "error" not in r]
        best = min(ok, key=lambda r: r["step_ms"]) if ok else rounds[-1]
        best["round_step_ms"] = [r.get("step_ms") for r in rounds]
        results.append(best)
    baseline, peak = summarize(results, config, args.batch_size, args.seq_len)
    report = {
        "meta": {
            "tool": "tools.bench",
            "command": "python -m tools.bench " + " ".join(argv),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu_model_name(),
            "cores": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "model": args.model,
            "num_parameters": config.num_parameters,
            "B": args.batch_size,
            "T": args.seq_len,
            "threads": args.threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "flops_per_step": config.flops_per_token(args.seq_len) * args.batch_size * args.seq_len,
            "blas_env": {k: os.environ.get(k) for k in blas_info.FORCING_ENV},
            "warnings": [warning] if warning else [],
        },
        "baseline": baseline,
        "matmul_peak_gflops": peak,
        "results": results,
    }
    print(format_results(report))
    if warning:
        print(f"warning: {warning}")
    if args.report_json:
        os.makedirs(os.path.dirname(os.path.abspath(args.report_json)), exist_ok=True)
        with atomic_write(args.report_json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.report_json}")
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
