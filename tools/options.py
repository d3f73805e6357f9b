"""The command-line vocabulary every tool shares: one spelling, one meaning, one help text per option.

    --backend NAME [NAME ...]   repeatable, several names at once too (train: exactly one)
    --fixture DIR [DIR ...]     repeatable
    --report-json PATH          every number the run measured, as JSON
    --report-md PATH            the same as a markdown table

Bad arguments and bad input files are a UsageError: main() prints one line naming the tool and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from backends.registry import BACKEND_OPTION_HELP
from conformance.fixture import FIXTURE_OPTION_HELP


class UsageError(Exception):
    """A bad argument or input file: run_main prints the message on one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """argparse, its errors raised as UsageError (so a tool called as a function does not exit)."""

    def error(self, message):
        raise UsageError(message)


def add_backend_option(
    parser: argparse.ArgumentParser, default: list[str] | str | None = None, single: bool = False
) -> None:
    if single:
        parser.add_argument(
            "--backend",
            default=default,
            metavar="NAME",
            help=BACKEND_OPTION_HELP.replace(" (repeatable)", "").split(";")[0],
        )
    else:
        parser.add_argument(
            "--backend",
            action="extend",
            nargs="+",
            metavar="NAME",
            default=None,
            help=BACKEND_OPTION_HELP
            if default is None
            else BACKEND_OPTION_HELP.split(";")[0] + f"; default: {' '.join(default)}",
        )
        if default is not None:
            parser.set_defaults(backend_default=list(default))


def chosen_backends(args: argparse.Namespace, fallback: tuple[str, ...] | list[str]) -> list[str]:
    """The --backend values in order, duplicates dropped; the tool's default where none was given."""
    names = args.backend or getattr(args, "backend_default", None) or list(fallback)
    return list(dict.fromkeys(names))


def add_fixture_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fixture", action="extend", nargs="+", metavar="DIR", help=FIXTURE_OPTION_HELP)


def add_report_options(
    parser: argparse.ArgumentParser,
    json_default: str | None = None,
    md_default: str | None = None,
    markdown: bool = True,
) -> None:
    parser.add_argument(
        "--report-json",
        default=json_default,
        metavar="PATH",
        help="write every measured number as JSON" + (f" (default: {json_default})" if json_default else ""),
    )
    if markdown:
        parser.add_argument(
            "--report-md",
            default=md_default,
            metavar="PATH",
            help="write the table as markdown" + (f" (default: {md_default})" if md_default else ""),
        )


def run_main(
    prog: str, main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: list[str] | None = None
) -> int:
    """parse argv, run main(args); a UsageError is one line on stderr and exit status 2."""
    try:
        return main(parser.parse_args(argv))
    except UsageError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
