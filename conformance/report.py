"""Reports of CheckResults: the terminal table, a JSON report and a markdown support matrix.

Generic over results: the model checks, the kernel checks and the ports' checks all report here.
A check run many times (a hypothesis kernel test) is one row: its worst errors, its total elements,
passed only if every run passed.

    print(format_table(results, not_run))
    write_json(results, "out/conformance.json", meta)    # meta: suite version, commit, platform, backends...
    write_markdown(results, "out/conformance.md", meta)  # rows = checks, columns = backends

not_run (also meta["not_run"], as dicts) lists the checks that produced no result
(conformance.model_checks.NotRun): ERROR where the backend raised before them (a crash, a timeout, a
failed call), "skipped" where it does not support what they need; each is a row of its own, and the
reasons follow the table. A result marked informational (a rerun difference of a backend that does not
declare itself deterministic) passes but shows as "differs".
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
    informational: bool = False


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
            rows[key] = Row(
                r.check,
                r.backend,
                r.precision,
                r.quantity,
                r.max_abs,
                r.rel_norm,
                r.elements,
                1,
                r.tol_max_abs,
                r.tol_rel_norm,
                r.passed,
                r.informational,
            )
            continue
        row.max_abs = worse(row.max_abs, r.max_abs)
        row.rel_norm = worse(row.rel_norm, r.rel_norm)
        row.elements += r.elements
        row.runs += 1
        row.passed = row.passed and r.passed
        row.informational = row.informational or r.informational
    return list(rows.values())


def _verdict(row):
    return "differs (info)" if row.informational else "pass" if row.passed else "FAIL"


def _not_run_groups(not_run):
    """[(backend, verdict, reason, [checks])] in first-seen order."""
    groups = {}
    for n in not_run:
        n = n if isinstance(n, dict) else vars(n)
        groups.setdefault((n["backend"], n["verdict"], n["reason"]), []).append(n["check"])
    return [(*key, checks) for key, checks in groups.items()]


def format_table(results, not_run=()):
    """The terminal table: check, backend, max abs, rel norm, elements, tolerance, verdict; a row per check
    that did not run (ERROR / skipped); then why, once per reason."""
    header = ("check", "backend", "max abs", "rel norm", "elements", "tolerance (abs / rel)", "verdict")
    lines = [
        (
            row.check + (f" (x{row.runs})" if row.runs > 1 else ""),
            row.backend,
            f"{row.max_abs:.2e}",
            f"{row.rel_norm:.2e}",
            str(row.elements),
            f"{row.tol_max_abs:.1e} / {row.tol_rel_norm:.1e}",
            _verdict(row),
        )
        for row in aggregate(results)
    ]
    groups = _not_run_groups(not_run)
    for number, (backend, verdict, _, checks) in enumerate(groups, 1):
        lines += [(check, backend, "-", "-", "-", "-", f"{verdict} [{number}]") for check in checks]
    widths = [max(len(cells[i]) for cells in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()
    table = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(cells) for cells in lines]
    return "\n".join(
        table
        + [
            f"[{number}] {verdict}, {len(checks)} checks of {backend}: {reason}"
            for number, (backend, verdict, reason, checks) in enumerate(groups, 1)
        ]
    )


def summary(results, not_run=()):
    """One line: how many checks passed of all (those that could not run included)."""
    not_run = [n if isinstance(n, dict) else vars(n) for n in not_run]
    failed = sum(not r.passed for r in results)
    errors = sum(n["verdict"] == "ERROR" for n in not_run)
    skipped = len(not_run) - errors
    info = sum(r.informational for r in results)
    total = len(results) + len(not_run)
    return (
        f"{len(results) - failed} of {total} checks passed, {failed} failed, {errors} could not run (ERROR), "
        f"{skipped} skipped (unsupported)" + (f", {info} informational differences" if info else "")
    )


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
    except Exception:  # not installed (run from a checkout): read pyproject.toml
        import tomllib

        with open(REPO_ROOT / "pyproject.toml", "rb") as f:
            suite_version = tomllib.load(f)["project"]["version"]
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        commit = "unknown"
    import numpy

    meta = {
        "suite_version": suite_version,
        "git_commit": commit,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "backends": dict(backends or {}),
    }
    meta.update(extra)
    return meta


def write_json(results, path, meta):
    """Every result, the aggregated rows and meta, written atomically."""
    not_run = [n if isinstance(n, dict) else vars(n) for n in meta.get("not_run", ())]
    meta = dict(meta, not_run=not_run)
    doc = {
        "meta": meta,
        "passed": all(r.passed for r in results) and not any(n["verdict"] == "ERROR" for n in not_run),
        "line": summary(results, not_run),
        "summary": [asdict(row) for row in aggregate(results)],
        "results": [r.to_dict() for r in results],
    }
    write_text(path, json.dumps(_json_safe(doc), indent=1, allow_nan=False) + "\n")


def write_markdown(results, path, meta=None):
    """The support matrix: rows = checks, columns = backends; a cell is pass / FAIL with the worst relative
    error, "differs" for an informational rerun difference, ERROR where the backend raised before the
    check, or 'skipped' where it does not support it or produced nothing for it (the reasons follow the
    table)."""
    meta = meta or {}
    not_run = [n if isinstance(n, dict) else vars(n) for n in meta.get("not_run", ())]
    rows = aggregate(results)
    backends = list(
        dict.fromkeys([r.backend for r in rows] + [n["backend"] for n in not_run] + list(meta.get("backends", {})))
    )
    checks = list(dict.fromkeys([r.check for r in rows] + [n["check"] for n in not_run]))
    cells = {(r.check, r.backend): r for r in rows}
    missing = {(n["check"], n["backend"]): n["verdict"] for n in not_run}
    lines = ["| check | " + " | ".join(backends) + " |", "|---|" + "---|" * len(backends)]
    for check in checks:
        row = [check]
        for b in backends:
            r = cells.get((check, b))
            if r is None:
                verdict = missing.get((check, b), "skipped")
                row.append("**ERROR**" if verdict == "ERROR" else verdict)
            elif r.informational:
                row.append(f"differs ({r.max_abs:.1e} max abs)")
            else:
                row.append(f"{'pass' if r.passed else '**FAIL**'} ({r.rel_norm:.1e})")
        lines.append("| " + " | ".join(row) + " |")
    text = [
        "# Conformance support matrix",
        "",
        "Cells: verdict (worst relative norm error, ||got - want|| / ||want||, over every run of the check); "
        '"differs": a rerun gave other bits, reported but not failed (the backend does not declare itself '
        "deterministic).",
        "",
    ]
    if meta:
        text += [
            f"Suite {meta.get('suite_version', '?')}, commit {meta.get('git_commit', '?')}, "
            f"{meta.get('platform', '?')}.",
            "",
            summary(results, not_run) + ".",
            "",
        ]
    text += lines
    if meta.get("backends"):
        text += ["", "Backends:", ""] + [f"- **{name}**: {what}" for name, what in meta["backends"].items()]
    groups = _not_run_groups(not_run)
    if groups:
        text += ["", "Checks that did not run:", ""]
        text += [
            f"- **{backend}**, {len(checks)} checks {verdict} ({checks[0]} ... {checks[-1]}): {reason}"
            for backend, verdict, reason, checks in groups
        ]
    write_text(path, "\n".join(text) + "\n")
