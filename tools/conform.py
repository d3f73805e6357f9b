"""The main job: model-level conformance of every available backend on every fixture.

    python -m tools.conform [--backend NAME ...] [--fixture DIR ...] [--report-json PATH] [--report-md PATH]
                            [--port-skips FILE] [--port-xfails FILE]

Runs conformance/model_checks.py (the same checks as conformance/test_model.py: logits, loss, the 16
gradients, wte padding, test_gpt2.c's loop with the loss, gradient norm, parameters and AdamW state after
every update in both AdamW conventions, reruns, the rest of the model API) for each backend (default:
every builtin one; an unavailable backend is listed with its reason) on each fixture (default: the
committed ones plus fixtures/gpt2_124M where `make fixtures` made it). Prints the table, writes the JSON
report (every check, and each backend's training losses) and the markdown support matrix, rewritten after
every fixture so what was judged survives a later failure, and exits 1 on any failure or error. A check
that could not run is a row of its own: ERROR where the backend raised (a lib: port's crash or hang is
one, in its own process), skipped where it said the feature is unsupported (a cmd: port's exit 3,
LLMC_ERR_UNSUPPORTED, a function a lib: port does not export). Bad input (a fixture, a backend name, a
list file) is one line on stderr and exit status 2. A port's skip / expected-failure lists
(conformance/port_lists.py) apply to the check names.

The default report paths (out/conform/conform.json, out/conform/support_matrix.md) are overwritten by
every run; give --report-json / --report-md to keep a report.
"""

from pathlib import Path
import sys
import time

from backends.base import BackendUnavailable
from backends.ports import PortCrashed
from backends.protocol import PortError
from backends.registry import SUITE_BACKENDS, get_backend
from conformance.fixture import default_fixture_dirs, load_fixture
from conformance.model_checks import TRAIN_STEPS, NotRun, check_names, run_model
from conformance.port_lists import apply_to_not_run, apply_to_results, read_list
from conformance.report import format_table, suite_meta, summary, write_json, write_markdown
from tools.options import (
    Parser,
    UsageError,
    add_backend_option,
    add_fixture_option,
    add_report_options,
    chosen_backends,
    run_main,
)

DEFAULT_JSON = Path("out/conform/conform.json")
DEFAULT_MARKDOWN = Path("out/conform/support_matrix.md")


def training_losses(results, fixture_name):
    """-> {backend: [its losses]} from the train_loss checks of one fixture (10 before updates, 1 after)."""
    losses = {}
    for step in range(TRAIN_STEPS + 1):
        for r in results:
            if r.check == f"{fixture_name}/train_loss/{step}":
                losses.setdefault(r.backend, []).append(r.got)
    return losses


def build_parser():
    parser = Parser(prog="python -m tools.conform", description=__doc__.splitlines()[0])
    add_backend_option(parser)
    add_fixture_option(parser)
    add_report_options(parser, json_default=str(DEFAULT_JSON), md_default=str(DEFAULT_MARKDOWN))
    parser.add_argument(
        "--port-skips",
        action="append",
        default=[],
        metavar="FILE",
        help="a port's skip list (conformance/port_lists.py): matching checks are left out",
    )
    parser.add_argument(
        "--port-xfails",
        action="append",
        default=[],
        metavar="FILE",
        help="a port's expected failures: a matching check passes by failing, and fails by passing",
    )
    return parser


def main(argv=None):
    return run_main("tools.conform", conform, build_parser(), argv)


def _usage(what, action, *args):
    """action(*args), its bad-input exceptions turned into a UsageError naming `what` (a port that crashed
    or hung, PortCrashed, is no bad input: it goes on, to be the ERROR of that port's checks)."""
    try:
        return action(*args)
    except PortCrashed:
        raise
    except (OSError, ValueError, PortError) as e:  # a missing file, a FormatError, a bad list line, a bad name
        raise UsageError(f"{what}: {e}") from e


def conform(args):
    skips = [entry for path in args.port_skips for entry in _usage(f"--port-skips {path}", read_list, path)]
    xfails = [entry for path in args.port_xfails for entry in _usage(f"--port-xfails {path}", read_list, path)]

    backends, described, broken = [], {}, {}
    for name in chosen_backends(args, SUITE_BACKENDS):
        try:
            backend = _usage(f"--backend {name}", get_backend, name)
        except BackendUnavailable as e:
            described[name] = f"unavailable: {e}"
            print(f"backend {name}: unavailable: {e}")
            continue
        except PortCrashed as e:  # loading the port killed it: each of its checks is an ERROR
            described[name] = broken[name] = f"{type(e).__name__}: {e}"
            print(f"backend {name}: ERROR: {e}")
            continue
        backends.append(backend)
        described[backend.name] = backend.description or backend.name

    results, not_run, losses = [], [], {}

    def report(complete):
        kept, notes = apply_to_results(list(results), skips, xfails) if complete else (results, [])
        kept_not_run = apply_to_not_run(not_run, skips) if complete else not_run
        meta = suite_meta(
            described,
            source="python -m tools.conform",
            training_losses=losses,
            not_run=kept_not_run,
            port_list_notes=notes,
            complete=complete,
        )
        write_json(kept, args.report_json, meta)
        write_markdown(kept, args.report_md, meta)
        return kept, kept_not_run, notes

    for path in args.fixture or default_fixture_dirs():
        fixture = _usage(f"--fixture {path}", load_fixture, path)  # one in memory at a time: gpt2_124M's is 1.3 GB
        expected = [float(v) for v in fixture.expected_losses]
        for name, reason in broken.items():
            not_run += [NotRun(check, name, "ERROR", reason) for check in check_names(fixture)]
        for backend in backends:
            start = time.perf_counter()
            run = run_model(backend, fixture)  # its checks so far count; the rest are ERROR (or skipped)
            results += run.results
            not_run += run.not_run
            print(
                f"{backend.name} on {fixture.name}: {time.perf_counter() - start:.1f} s"
                + (f", {len(run.not_run)} checks did not run" if run.not_run else ""),
                flush=True,
            )
        losses[fixture.name] = {
            "expected": expected,
            "source": fixture.losses_source,
            **training_losses(results, fixture.name),
        }
        report(complete=False)  # what was judged so far survives whatever comes next
        del fixture

    results, not_run, notes = report(complete=True)
    print(format_table(results, not_run))
    for note in notes:
        print(note)
    failed = [r for r in results if not r.passed]
    errors = [n for n in not_run if n.verdict == "ERROR"]
    print(
        f"{summary(results, not_run)}; wrote {args.report_json} and {args.report_md}"
        + (
            " (the default paths: the next run overwrites them; --report-json/--report-md PATH keep a report)"
            if (args.report_json, args.report_md) == (str(DEFAULT_JSON), str(DEFAULT_MARKDOWN))
            else ""
        )
    )
    return 1 if failed or errors or not results else 0


if __name__ == "__main__":
    sys.exit(main())
