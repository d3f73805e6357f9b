"""Reports of CheckResults: the terminal table, a JSON report and a markdown support matrix.

Generic over results: the model checks, the kernel checks and the ports' checks all report here.
A check run many times (a hypothesis kernel test) is one row: its worst errors, its total elements,
passed only if every run passed.

    print(format_table(results, stopped))
    write_json(results, "out/conformance.json", meta)    # meta: suite version, commit, platform, backends...
    write_markdown(results, "out/conformance.md", meta)  # rows = checks, columns = backends

stopped (also meta["stopped"]) lists the model-check runs that stopped part way (stopped_entry): their
checks not reached are ERROR where the backend raised, "skipped" where it does not support them.
"""
from dataclasses import asdict, dataclass
import json
import math
import os
from pathlib import Path
import platform
import subprocess

from reference.formats import atomic_write

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    check: str
    backend: str
    precision: str
    quantity: str
    max_abs: float
    rel_norm: float
    elements: int
    runs: int
    tol_max_abs: float
    tol_rel_norm: float
    passed: bool


def worse(a, b):
    """The larger error; NaN (a non-finite output) counts as the worst."""
    if math.isnan(a) or math.isnan(b):
        return math.nan
    return max(a, b)


def aggregate(results):
    """CheckResults -> one Row per (check, backend), in the order first seen."""
    rows = {}
    for r in results:
        key = (r.check, r.backend)
        row = rows.get(key)
        if row is None:
            rows[key] = Row(r.check, r.backend, r.precision, r.quantity, r.max_abs, r.rel_norm, r.elements, 1,
                            r.tol_max_abs, r.tol_rel_norm, r.passed)
            continue
        row.max_abs = worse(row.max_abs, r.max_abs)
        row.rel_norm = worse(row.rel_norm, r.rel_norm)
        row.elements += r.elements
        row.runs += 1
        row.passed = row.passed and r.passed
    return list(rows.values())


def stopped_entry(stopped, unsupported):
    """A run that stopped (conformance.model_checks.ModelChecksStopped) -> the reports' record of it."""
    return {"backend": stopped.backend, "fixture": stopped.fixture, "verdict": "skipped" if unsupported else "ERROR",
            "reason": f"{'unsupported' if unsupported else type(stopped.cause).__name__}: {stopped.cause}"}


def _not_reached(stopped, check, backend):
    """The verdict of a check with no result: ERROR / skipped from its stopped run, else skipped."""
    fixture = check.split("/", 1)[0]
    verdicts = [s["verdict"] for s in stopped if s["backend"] == backend and s["fixture"] == fixture]
    return verdicts[0] if verdicts else "skipped"


def format_table(results, stopped=()):
    """The terminal table: check, backend, max abs, rel norm, elements, tolerance, pass; then one line per
    stopped run: the rest of its checks, ERROR or skipped, with the reason."""
    header = ("check", "backend", "max abs", "rel norm", "elements", "tolerance (abs / rel)", "pass")
    lines = [(row.check + (f" (x{row.runs})" if row.runs > 1 else ""), row.backend, f"{row.max_abs:.2e}",
              f"{row.rel_norm:.2e}", str(row.elements), f"{row.tol_max_abs:.1e} / {row.tol_rel_norm:.1e}",
              "pass" if row.passed else "FAIL") for row in aggregate(results)]
    widths = [max(len(cells[i]) for cells in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    table = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(cells) for cells in lines]
    return "\n".join(table + [f"{s['fixture']}/* not reached  {s['backend']}  {s['verdict']}  ({s['reason']})"
                              for s in stopped])


def write_text(path, text):
    """Atomically (reference.formats.atomic_write), making the directory first."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(text)


def _json_safe(value):
    """NaN and infinity are not JSON: keep them readable as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def suite_meta(backends=None, **extra):
    """The report header: suite version, git commit, platform, and what each backend is (or why it is missing).
    backends: {name: description or 'unavailable: reason'}."""
    try:
        from importlib.metadata import version
        suite_version = version("llmc-conformance")
    except Exception:   # not installed (run from a checkout): read pyproject.toml
        import tomllib
        with open(REPO_ROOT / "pyproject.toml", "rb") as f:
            suite_version = tomllib.load(f)["project"]["version"]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    import numpy
    meta = {"suite_version": suite_version, "git_commit": commit, "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "numpy": numpy.__version__, "backends": dict(backends or {})}
    meta.update(extra)
    return meta


def write_json(results, path, meta):
    """Every result, the aggregated rows and meta, written atomically."""
    doc = {"meta": meta,
           "passed": all(r.passed for r in results) and not any(s["verdict"] == "ERROR"
                                                                 for s in meta.get("stopped", ())),
           "summary": [asdict(row) for row in aggregate(results)],
           "results": [r.to_dict() for r in results]}
    write_text(path, json.dumps(_json_safe(doc), indent=1, allow_nan=False) + "\n")


def write_markdown(results, path, meta=None):
    """The support matrix: rows = checks, columns = backends; a cell is pass / FAIL with the worst relative
    error, ERROR where the backend raised before the check, or 'skipped' where the backend produced no
    result for it (unavailable or unsupported: the reasons follow the table)."""
    stopped = (meta or {}).get("stopped", ())
    rows = aggregate(results)
    backends = list(dict.fromkeys([r.backend for r in rows] + list((meta or {}).get("backends", {}))))
    checks = list(dict.fromkeys(r.check for r in rows))
    cells = {(r.check, r.backend): r for r in rows}
    lines = ["| check | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for check in checks:
        row = [check]
        for b in backends:
            r = cells.get((check, b))
            if r is None:
                verdict = _not_reached(stopped, check, b)
                row.append("**ERROR**" if verdict == "ERROR" else verdict)
            else:
                row.append(f"{'pass' if r.passed else '**FAIL**'} ({r.rel_norm:.1e})")
        lines.append("| " + " | ".join(row) + " |")
    text = ["# Conformance support matrix", "",
            "Cells: verdict (worst relative norm error, ||got - want|| / ||want||, over every run of the check).", ""]
    if meta:
        text += [f"Suite {meta.get('suite_version', '?')}, commit {meta.get('git_commit', '?')}, "
                 f"{meta.get('platform', '?')}.", ""]
    text += lines
    if meta and meta.get("backends"):
        text += ["", "Backends:", ""] + [f"- **{name}**: {what}" for name, what in meta["backends"].items()]
    if stopped:
        text += ["", "Runs that stopped part way (their remaining checks are ERROR or skipped):", ""]
        text += [f"- **{s['backend']}** on {s['fixture']}: {s['verdict']}: {s['reason']}" for s in stopped]
    write_text(path, "\n".join(text) + "\n")
