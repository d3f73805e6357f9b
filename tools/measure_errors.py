"""Measure the errors the tolerance table rests on, for any backend: worst case per quantity, with a bound.

    python -m tools.measure_errors [--backend NAME ...] [--fixture DIR ...] [--kernel-shapes N] [--report-json PATH]

Runs the model checks (conformance/model_checks.py) on each fixture and every kernel check
(conformance/kernel_checks.py) on N random shapes plus the suite's example shapes, then prints, per
(quantity, precision class): the worst max abs and rel norm error and where they occurred, the table's
current tolerance, and with_margin() of the worst (10x, one digit): the numbers to put in
conformance/tolerances.py (e.g. measured on the GPU for the tf32 class). Exits 1 where a current tolerance
does not hold.
"""
import json
import math
import sys

import numpy as np

from backends.base import BackendUnavailable
from backends.registry import BUILTIN_BACKENDS, get_backend
from conformance.fixture import default_fixture_dirs, load_fixture
from conformance.kernel_checks import EXAMPLE_SHAPES, random_shape, run_kernel_check
from conformance.model_checks import run_model
from conformance.report import write_text
from conformance.tolerances import with_margin
from reference.layers import KERNEL_NAMES
from tools.options import Parser, add_backend_option, add_fixture_option, add_report_options, chosen_backends


def worst_errors(results):
    """CheckResults -> {(quantity, precision): row} with the worst errors, where they were, the tolerance."""
    rows = {}
    for r in results:
        where = f"{r.backend} {r.check}"
        row = rows.setdefault((r.quantity, r.precision), {
            "quantity": r.quantity, "precision": r.precision, "max_abs": 0.0, "max_abs_at": "", "rel_norm": 0.0,
            "rel_norm_at": "", "runs": 0, "tol_max_abs": r.tol_max_abs, "tol_rel_norm": r.tol_rel_norm,
            "passed": True})
        for error in ("max_abs", "rel_norm"):       # NaN (a non-finite output) is the worst and stays
            if math.isnan(getattr(r, error)) or getattr(r, error) > row[error]:
                row[error], row[f"{error}_at"] = getattr(r, error), where
        row["runs"] += 1
        row["passed"] = row["passed"] and r.passed
    for row in rows.values():
        row["suggested_max_abs"] = with_margin(row["max_abs"])
        row["suggested_rel_norm"] = with_margin(row["rel_norm"])
    return list(rows.values())


def main(argv=None):
    parser = Parser(prog="python -m tools.measure_errors", description=__doc__.splitlines()[0])
    add_backend_option(parser)
    add_fixture_option(parser)
    parser.add_argument("--kernel-shapes", type=int, default=300, metavar="N", help="random kernel shapes (300)")
    parser.add_argument("--seed", type=int, default=123, help="of the random kernel shapes and inputs")
    add_report_options(parser, markdown=False)
    args = parser.parse_args(argv)

    backends = []
    for name in chosen_backends(args, BUILTIN_BACKENDS):
        try:
            backends.append(get_backend(name))
        except BackendUnavailable as e:
            print(f"backend {name}: unavailable: {e}")
    results = []
    for path in args.fixture or default_fixture_dirs():
        fixture = load_fixture(path)
        for backend in backends:
            results += run_model(backend, fixture).results     # what a backend cannot do has no error to measure
    rng = np.random.default_rng(args.seed)
    shapes = list(EXAMPLE_SHAPES) + [random_shape(rng) for _ in range(args.kernel_shapes)]
    for backend in backends:
        for n, shape in enumerate(shapes):
            for name in KERNEL_NAMES:
                if backend.has_kernel(name):
                    results += run_kernel_check(backend, name, shape, seed=args.seed + n)

    rows = worst_errors(results)
    for row in rows:
        verdict = "ok" if row["passed"] else "EXCEEDED"
        print(f"{row['quantity']:45} {row['precision']:5} abs {row['max_abs']:.2e} ({row['max_abs_at']})  "
              f"rel {row['rel_norm']:.2e} ({row['rel_norm_at']})  tolerance {row['tol_max_abs']:.0e} / "
              f"{row['tol_rel_norm']:.0e} {verdict}  suggested {row['suggested_max_abs']:.0e} / "
              f"{row['suggested_rel_norm']:.0e}")
    if args.report_json:
        write_text(args.report_json, json.dumps(rows, indent=1, default=str) + "\n")
    return 0 if all(row["passed"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
