"""The main job: model-level conformance of every available backend on every fixture.

    python -m tools.conform [--backend NAME ...] [--fixture DIR ...] [--report-json PATH] [--report-md PATH]
                            [--port-skips FILE] [--port-xfails FILE]

Runs conformance/model_checks.py (the same checks as conformance/test_model.py: logits, loss, the 16
gradients, wte padding, test_gpt2.c's 10 training losses) for each backend (default: every builtin one;
an unavailable backend is listed with its reason) on each fixture (default: the committed ones plus
fixtures/gpt2_124M where `make fixtures` made it). Prints the table, writes the JSON report (every
check, and each backend's 10 losses) and the markdown support matrix, and exits 1 on any failure or
error. A backend that raises part way keeps the checks it made; the rest are ERROR, or skipped when it
said the feature is unsupported (a cmd: port's exit 3, LLMC_ERR_UNSUPPORTED, a lib: port without the
model API). Bad input (a fixture, a backend name, a list file) is one line on stderr and exit status 2.
A port's skip / expected-failure lists (conformance/port_lists.py) apply to the check names.
"""
from pathlib import Path
import sys
import time

from backends.base import BackendUnavailable
from backends.ports import is_unsupported
from backends.protocol import PortError
from backends.registry import BUILTIN_BACKENDS, get_backend
from conformance.fixture import default_fixture_dirs, load_fixture
from conformance.model_checks import TRAIN_STEPS, ModelChecksStopped, run_model_checks
from conformance.port_lists import apply_to_results, read_list
from conformance.report import format_table, stopped_entry, suite_meta, write_json, write_markdown
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
    """-> {backend: [its 10 losses]} from the train_loss checks of one fixture."""
    losses = {}
    for step in range(TRAIN_STEPS):
        for r in results:
            if r.check == f"{fixture_name}/train_loss/{step}":
                losses.setdefault(r.backend, []).append(r.got)
    return losses


def build_parser():
    parser = Parser(prog="python -m tools.conform", description=__doc__.splitlines()[0])
    add_backend_option(parser)
    add_fixture_option(parser)
    add_report_options(parser, json_default=str(DEFAULT_JSON), md_default=str(DEFAULT_MARKDOWN))
    parser.add_argument("--port-skips", action="append", default=[], metavar="FILE",
                        help="a port's skip list (conformance/port_lists.py): matching checks are left out")
    parser.add_argument("--port-xfails", action="append", default=[], metavar="FILE",
                        help="a port's expected failures: a matching check passes by failing, and fails by passing")
    return parser


def main(argv=None):
    return run_main("tools.conform", conform, build_parser(), argv)


def _usage(what, action, *args):
    """action(*args), its bad-input exceptions turned into a UsageError naming `what`."""
    try:
        return action(*args)
    except (OSError, ValueError, PortError) as e:   # a missing file, a FormatError, a bad list line, a bad name
        raise UsageError(f"{what}: {e}") from e


def conform(args):
    skips = [entry for path in args.port_skips for entry in _usage(f"--port-skips {path}", read_list, path)]
    xfails = [entry for path in args.port_xfails for entry in _usage(f"--port-xfails {path}", read_list, path)]

    backends, described = [], {}
    for name in chosen_backends(args, BUILTIN_BACKENDS):
        try:
            backend = _usage(f"--backend {name}", get_backend, name)
        except BackendUnavailable as e:
            described[name] = f"unavailable: {e}"
            print(f"backend {name}: unavailable: {e}")
            continue
        backends.append(backend)
        described[backend.name] = backend.description or backend.name

    results, stopped, losses = [], [], {}
    for path in args.fixture or default_fixture_dirs():
        fixture = _usage(f"--fixture {path}", load_fixture, path)   # one in memory at a time: gpt2_124M's is 1.3 GB
        expected = [float(v) for v in fixture.expected_losses]
        for backend in backends:
            start = time.perf_counter()
            try:
                results += run_model_checks(backend, fixture)
            except ModelChecksStopped as e:   # its checks so far count; the rest are ERROR (or skipped: unsupported)
                results += e.results
                stopped.append(stopped_entry(e, is_unsupported(e.cause)))
            print(f"{backend.name} on {fixture.name}: {time.perf_counter() - start:.1f} s", flush=True)
        losses[fixture.name] = {"expected": expected, "source": fixture.losses_source,
                                **training_losses(results, fixture.name)}

    results, notes = apply_to_results(results, skips, xfails)
    print(format_table(results, stopped))
    for note in notes:
        print(note)
    failed = [r for r in results if not r.passed]
    errors = [s for s in stopped if s["verdict"] == "ERROR"]
    meta = suite_meta(described, source="python -m tools.conform", training_losses=losses, stopped=stopped,
                      port_list_notes=notes)
    write_json(results, args.report_json, meta)
    write_markdown(results, args.report_md, meta)
    print(f"{len(results) - len(failed)} of {len(results)} checks passed, {len(errors)} errors, "
          f"{len(stopped) - len(errors)} unsupported; wrote {args.report_json} and {args.report_md}")
    return 1 if failed or errors or not results else 0


if __name__ == "__main__":
    sys.exit(main())
