"""Benchmark JSON -> markdown tables and PNG charts: python -m tools.bench_report FILE.json [...] [--out DIR]

Reads tools.bench's JSON (ms per step by phase, peak RSS, matmul GFLOP/s, per-kernel times, the BLAS
kernel each backend ran) and pytest-benchmark's (`make bench`: tests/test_bench.py, whose extra_info
carries the model, B, T, FLOPs per step and the BLAS kernel). Writes DIR/report.md (every run's table:
ms per step, the ratio to the baseline — torch where the run has it, else reference —, tok/s, GFLOP/s,
its ratio to the sgemm peak measured in the same run, the BLAS kernel; then the per-kernel times) and,
with matplotlib, DIR/step_time.png and DIR/kernels.png. A run whose environment forced OpenBLAS's core
(OPENBLAS_CORETYPE) carries that warning.
"""

import argparse
from dataclasses import dataclass, field
import json
import os
import sys

from reference.formats import atomic_write
from tools.blas_info import describe


@dataclass
class Run:
    """One benchmark run: the rows of one JSON file for one model shape."""

    source: str
    title: str
    rows: list = field(default_factory=list)  # dicts: backend, step_ms, tok_per_s, gflops, share, ratio, phase_ms, rss
    baseline: str = None
    peak_gflops: float = None
    matmul: dict = field(default_factory=dict)  # backend -> {shape label: GFLOP/s}
    layers: dict = field(default_factory=dict)  # backend -> {label: {calls, ms}}
    notes: list = field(default_factory=list)


def _finish(run, flops_per_step, tokens):
    """Fill tok/s, GFLOP/s, share of peak and the ratio to the baseline of every row."""
    names = [r["backend"] for r in run.rows]
    run.baseline = "torch" if "torch" in names else ("reference" if "reference" in names else None)
    base_ms = next((r["step_ms"] for r in run.rows if r["backend"] == run.baseline), None)
    for r in run.rows:
        seconds = r["step_ms"] / 1000
        r["tok_per_s"] = tokens / seconds
        r["gflops"] = flops_per_step / seconds / 1e9
        r["share"] = r["gflops"] / run.peak_gflops if run.peak_gflops else None
        r["ratio"] = r["step_ms"] / base_ms if base_ms else None


def runs_from_tools_bench(path, data):
    meta = data["meta"]
    forced = (meta.get("blas_env") or {}).get("OPENBLAS_CORETYPE")
    run = Run(
        source=path,
        title=f"{meta['model']} B={meta['B']} T={meta['T']}, {meta['threads']} threads, "
        f"{meta['cpu']}, {meta['date']} (tools.bench, median of {meta['steps']} steps)"
        + (f", OPENBLAS_CORETYPE={forced}" if forced else ""),
        peak_gflops=data.get("matmul_peak_gflops"),
    )
    if "load_avg" in meta:
        run.notes.append(
            f"load average at the end: {', '.join(f'{x:.2f}' for x in meta['load_avg'])} on {meta['cores']} cores"
        )
    run.notes.append(f"command: `{meta['command']}`")
    run.notes += [f"**warning**: {w}" for w in meta.get("warnings", [])]
    for r in data["results"]:
        if "error" in r:
            run.notes.append(f"{r['backend']}: failed: {r['error']}")
            continue
        run.rows.append(
            {
                "backend": r["backend"],
                "step_ms": r["step_ms"],
                "phase_ms": r["phase_ms"],
                "rss": r.get("peak_rss_mib"),
                "min_ms": min(r["step_ms_all"]),
                "load": r.get("load_avg_before"),
                "blas": r.get("blas"),
            }
        )
        if r.get("matmul_gflops"):
            run.matmul[r["backend"]] = r["matmul_gflops"]
        if r.get("layers"):
            run.layers[r["backend"]] = r["layers"]
    _finish(run, meta["flops_per_step"], meta["B"] * meta["T"])
    return [run]


def runs_from_pytest_benchmark(path, data):
    """One Run per (model, B, T) among the file's benchmarks."""
    cpu = data.get("machine_info", {}).get("cpu", {}).get("brand_raw", "?")
    groups = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "flops_per_step" not in info:
            continue  # not one of test_bench.py's
        key = (info["model"], info["B"], info["T"], info.get("threads"))
        groups.setdefault(key, []).append((info, b["stats"]))
    runs = []
    for (model, B, T, threads), entries in groups.items():
        run = Run(
            source=path,
            title=f"{model} B={B} T={T}, {threads} threads, {cpu}, {data.get('datetime', '?')} "
            f"(pytest-benchmark, median of {entries[0][1]['rounds']} rounds)",
        )
        for info, stats in entries:
            run.rows.append(
                {
                    "backend": info["backend"],
                    "step_ms": 1000 * stats["median"],
                    "phase_ms": None,
                    "rss": None,
                    "min_ms": 1000 * stats["min"],
                    "load": None,
                    "blas": info.get("blas"),
                }
            )
        run.notes += sorted({f"**warning**: {info['blas_warning']}" for info, _ in entries if info.get("blas_warning")})
        _finish(run, entries[0][0]["flops_per_step"], B * T)
        runs.append(run)
    return runs


def load_runs(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        raise SystemExit(f"bench_report: error: {path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"bench_report: error: {path}: not JSON ({e})") from None
    if data.get("meta", {}).get("tool") == "tools.bench":
        return runs_from_tools_bench(path, data)
    if "benchmarks" in data:
        return runs_from_pytest_benchmark(path, data)
    raise SystemExit(f"bench_report: error: {path}: neither tools.bench nor pytest-benchmark JSON")


# ----------------------------------------------------------------------------- markdown
def _fmt(value, spec, missing="–"):
    return missing if value is None else format(value, spec)


def markdown(runs, charts):
    lines = ["# Training-step benchmarks", ""]
    for chart in charts:
        lines += [f"![{chart}]({chart})", ""]
    for run in runs:
        lines += [f"## {run.title}", "", f"Source: `{run.source}`"]
        lines += [f"- {note}" for note in run.notes]
        lines += [
            "",
            f"| backend | ms / step | × {run.baseline or '–'} | tok/s | GFLOP/s | % of sgemm peak "
            "| forward ms | backward ms | update ms | peak RSS MiB | min ms / step | load before "
            "| BLAS kernel |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in run.rows:
            ph = r["phase_ms"] or {}
            lines.append(
                f"| {r['backend']} | {r['step_ms']:.1f} | {_fmt(r['ratio'], '.2f')} | {r['tok_per_s']:.0f} "
                f"| {r['gflops']:.1f} | {_fmt(r['share'] and 100 * r['share'], '.1f')} "
                f"| {_fmt(ph.get('forward'), '.1f')} | {_fmt(ph.get('backward'), '.1f')} "
                f"| {_fmt(ph.get('update'), '.1f')} | {_fmt(r['rss'], '.0f')} | {r['min_ms']:.1f} "
                f"| {_fmt(r['load'], '.2f')} | {describe(r.get('blas'))} |"
            )
        if run.peak_gflops:
            lines += [
                "",
                f"Measured sgemm peak at these shapes: **{run.peak_gflops:.1f} GFLOP/s** "
                "(the best matmul_forward / F.linear of any backend in the run; a whole step's GFLOP/s "
                "as a ratio of it is the % column above):",
                "",
            ]
            shapes = list(next(iter(run.matmul.values())))
            lines += ["| backend | " + " | ".join(shapes) + " |", "|---|" + "---:|" * len(shapes)]
            for backend, g in run.matmul.items():
                lines.append(f"| {backend} | " + " | ".join(_fmt(g.get(s), ".1f") for s in shapes) + " |")
        for backend, layers in run.layers.items():
            total = sum(x["calls"] * x["ms"] for x in layers.values())
            lines += [
                "",
                f"Per-kernel time of **{backend}**, each kernel alone at these shapes (sum {total:.1f} ms per step):",
                "",
                "| kernel | calls / step | ms / call | ms / step | share |",
                "|---|---:|---:|---:|---:|",
            ]
            for label, x in sorted(layers.items(), key=lambda kv: -kv[1]["calls"] * kv[1]["ms"]):
                ms = x["calls"] * x["ms"]
                lines.append(f"| {label} | {x['calls']} | {x['ms']:.3f} | {ms:.2f} | {100 * ms / total:.1f}% |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- charts
def _save(fig, path):
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)


def charts(runs, outdir):
    """-> names of the PNGs written into outdir ([] without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_report: charts skipped: matplotlib is not installed (pip install -e '.[plot]')", file=sys.stderr)
        return []
    written = []
    # ms per step: one panel per run, stacked by phase where the run has phases
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(8, 1.2 + 0.55 * sum(len(r.rows) for r in runs) + 0.6 * len(runs)), squeeze=False
    )
    colors = {"forward": "#4c72b0", "zero_grad": "#aaaaaa", "backward": "#dd8452", "update": "#55a868"}
    for ax, run in zip(axes[:, 0], runs, strict=True):
        names = [r["backend"] for r in run.rows]
        for i, r in enumerate(run.rows):
            if r["phase_ms"]:
                left = 0.0
                for phase, ms in r["phase_ms"].items():
                    ax.barh(i, ms, left=left, color=colors.get(phase), label=phase if i == 0 else None)
                    left += ms
            else:
                ax.barh(i, r["step_ms"], color="#4c72b0")
            note = f" {r['step_ms']:.0f} ms" + (f"  ({r['ratio']:.2f}x {run.baseline})" if r["ratio"] else "")
            # the step's median is not quite the sum of the phases' medians: label past whichever is longer
            ax.text(max(r["step_ms"], sum((r["phase_ms"] or {}).values())), i, note, va="center", fontsize=8)
        ax.set_yticks(range(len(names)), names)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.35 * max(r["step_ms"] for r in run.rows))
        ax.set_xlabel("ms per training step (lower is better)")
        ax.set_title(run.title, fontsize=8)
        if any(r["phase_ms"] for r in run.rows):
            ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    fig.tight_layout()
    _save(fig, os.path.join(outdir, "step_time.png"))
    plt.close(fig)
    written.append("step_time.png")

    kernel_runs = [(run, backend, layers) for run in runs for backend, layers in run.layers.items()]
    if kernel_runs:
        run, backend, layers = kernel_runs[0]
        items = sorted(layers.items(), key=lambda kv: -kv[1]["calls"] * kv[1]["ms"])
        fig, ax = plt.subplots(figsize=(8, 0.9 + 0.28 * len(items)))
        ax.barh(range(len(items)), [x["calls"] * x["ms"] for _, x in items], color="#4c72b0")
        ax.set_yticks(range(len(items)), [label for label, _ in items], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms per training step (each kernel alone, times its calls per step)")
        ax.set_title(f"{backend} kernels\n{run.title}", fontsize=8)
        fig.tight_layout()
        _save(fig, os.path.join(outdir, "kernels.png"))
        plt.close(fig)
        written.append("kernels.png")
    return written


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.bench_report", description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="tools.bench --json files and pytest-benchmark JSON files")
    p.add_argument("--out", default="docs/bench", help="directory for report.md and the PNGs")
    args = p.parse_args(argv)
    runs = [run for path in args.files for run in load_runs(path)]
    runs = [run for run in runs if run.rows]
    if not runs:
        raise SystemExit("bench_report: error: no training-step results in " + ", ".join(args.files))
    os.makedirs(args.out, exist_ok=True)
    written = charts(runs, args.out)
    with atomic_write(os.path.join(args.out, "report.md"), "w") as f:
        f.write(markdown(runs, written))
    for name in ["report.md", *written]:
        print(f"wrote {os.path.join(args.out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
