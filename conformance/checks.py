"""The one place that turns arrays into a verdict, and the session-wide record of verdicts.

Every comparison of the suite (pytest tests, tools.conform, the meta tests) goes through compare(),
which measures, in float64:
    max_abs  = max |got - want|
    rel_norm = ||got - want|| / ||want||     (or / scale: see below)
and passes only when both are within the tolerance table's entry and every value is finite.

A slice whose exact value is zero (the key part of dqkvb) has no meaningful ||want||: pass
scale = the norm of the whole tensor, so its rounding noise is judged against the tensor it lives in.
"""

from dataclasses import asdict, dataclass
import math

import numpy as np

from conformance.tolerances import tolerance


@dataclass
class CheckResult:
    check: str  # what was compared, e.g. "tiny-bytes/grad/dwte" or "kernel/matmul_backward/dweight"
    backend: str
    precision: str  # the tolerance class: fp32, tf32, bf16 (fp64 for the oracle's own proofs)
    quantity: str  # the tolerance table's quantity
    max_abs: float
    rel_norm: float
    elements: int
    tol_max_abs: float
    tol_rel_norm: float
    passed: bool
    detail: str = ""
    got: float | None = None  # scalar checks (a loss) keep both values: reports list the losses
    want: float | None = None
    informational: bool = False  # a difference reported, not failed (a rerun of a backend not declared
    # deterministic): passed is True, the reports show it

    def message(self):
        verdict = "differs (informational)" if self.informational else "passed" if self.passed else "FAILED"
        text = (
            f"{self.check} [{self.backend}, {self.precision}] {verdict}: max abs {self.max_abs:.3e} "
            f"(tol {self.tol_max_abs:.1e}), rel norm {self.rel_norm:.3e} (tol {self.tol_rel_norm:.1e}) "
            f"over {self.elements} elements"
        )
        return f"{text}; {self.detail}" if self.detail else text

    def to_dict(self):
        return asdict(self)


def compare(check, backend, got, want, tol_key, scale=None):
    """got (the implementation's) vs want (the oracle's) under tolerance(*tol_key) -> CheckResult.

    tol_key = (quantity, precision). scale, when given, replaces ||want|| as the denominator of the
    relative error (for slices that are exactly zero in exact arithmetic)."""
    quantity, precision = tol_key
    tol = tolerance(quantity, precision)
    try:
        got_array = None if got is None else np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError):
        got_array = None
    if got_array is None:  # None (numpy would read it as NaN), a string, a ragged list
        return CheckResult(
            check,
            backend,
            precision,
            quantity,
            math.nan,
            math.nan,
            int(np.size(want)),
            tol.max_abs,
            tol.rel_norm,
            False,
            f"got {got!r}, not an array of numbers",
        )
    scalar = np.ndim(got) == 0 and np.ndim(want) == 0
    got, want = got_array, np.asarray(want, dtype=np.float64)

    def result(max_abs, rel_norm, passed, detail):
        return CheckResult(
            check,
            backend,
            precision,
            quantity,
            float(max_abs),
            float(rel_norm),
            int(want.size),
            tol.max_abs,
            tol.rel_norm,
            bool(passed),
            detail,
            float(got) if scalar else None,
            float(want) if scalar else None,
        )

    if got.shape != want.shape:
        return result(math.inf, math.inf, False, f"shape {got.shape} differs from the expected {want.shape}")
    for name, values in (("got", got), ("want", want)):
        bad = ~np.isfinite(values)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            return result(
                math.nan,
                math.nan,
                False,
                f"{int(bad.sum())} non-finite values in {name} (first at index {first}: "
                f"{values[first] if values.ndim else float(values)})",
            )
    diff = got - want
    if diff.size == 0:
        return result(0.0, 0.0, True, "empty")
    abs_diff = np.abs(diff)
    worst = np.unravel_index(int(np.argmax(abs_diff)), diff.shape)
    max_abs = float(abs_diff[worst])
    diff_norm = float(np.linalg.norm(diff.ravel()))
    denominator = float(np.linalg.norm(want.ravel())) if scale is None else float(scale)
    if denominator > 0:
        rel_norm = diff_norm / denominator
    else:
        rel_norm = 0.0 if diff_norm == 0 else math.inf
    passed = max_abs <= tol.max_abs and rel_norm <= tol.rel_norm
    where = f" at index {tuple(int(i) for i in worst)}" if diff.ndim else ""
    detail = f"worst{where}: got {got[worst]:.9g}, want {want[worst]:.9g}"
    if scale is not None:
        detail += f"; relative to the scale {denominator:.3e}"
    return result(max_abs, rel_norm, passed, detail)


class Recorder:
    """Every CheckResult of a session, in order: the source of the terminal table and the reports."""

    def __init__(self):
        self.results = []

    def add(self, result):
        self.results.append(result)
        return result

    def check(self, result):
        """Record, then assert (the pytest way of saying pass / fail), with the numbers in the message."""
        self.add(result)
        if not result.passed:
            raise AssertionError(result.message())
        return result
