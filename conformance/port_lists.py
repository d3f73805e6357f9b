"""A port's own skip and expected-failure lists, as a pytest plugin (and for tools.conform).

A list is plain text, one pattern per line; '#' starts a comment, which becomes the reason shown:

    # llm.c's gpt2_update decays every parameter
    *test_update_decay_2d*          # PyTorch-style AdamW: not in llm.c
    *grad/dwte*

A pattern is matched (case-sensitively) against the pytest node id (conformance/test_model.py::
test_gradient[dwte-lib:x.so-tiny-bytes]) and, in tools.conform, against the check name
(tiny-bytes/grad/dwte); '*' matches anything and '?' one character; '[' and ']' are literal, so test
ids can be pasted as they are. Entries that match no test draw a warning (a stale list hides nothing).

    pytest conformance/ --backend lib:x.so --port-skips skips.txt --port-xfails xfails.txt

Skipped tests do not run. Expected failures run, and are reported as xfailed; one that passes fails the
run (strict), so a list shrinks as the port gets fixed.

Registering: conformance/conftest.py registers this module as a plugin (`-p conformance.port_lists`
on the command line does the same).
"""

from dataclasses import dataclass
import fnmatch
import re
import warnings

import pytest


class PortListWarning(UserWarning):
    """An entry of a skip / expected-failure list that matched nothing."""


@dataclass(frozen=True)
class Entry:
    pattern: str
    reason: str
    source: str  # "FILE:LINE", for messages

    def matches(self, name):
        return _compile(self.pattern).fullmatch(name) is not None


def _compile(pattern):
    # fnmatch without character classes: test ids are full of brackets
    return re.compile(
        fnmatch.translate(pattern.replace("[", "\0").replace("]", "\1")).replace("\0", r"\[").replace("\1", r"\]")
    )


def read_list(path):
    """A list file -> [Entry]; a line's comment (or the comment block above it) is its reason."""
    entries, block_comment = [], ""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            text, _, comment = line.partition("#")
            text, comment = text.strip(), comment.strip()
            if not text:
                if comment:
                    block_comment = comment  # a comment line gives the reason of the entries below it
                elif not line.strip():
                    block_comment = ""  # until a blank line
                continue
            if any(c.isspace() for c in text):
                raise ValueError(f"{path}:{number}: {text!r} is not one pattern (no spaces inside a pattern)")
            entries.append(Entry(text, comment or block_comment or "listed", f"{path}:{number}"))
    return entries


def first_match(entries, *names):
    for entry in entries:
        if any(entry.matches(name) for name in names):
            return entry
    return None


def unmatched(entries, names):
    """The entries that match none of names."""
    names = list(names)
    return [e for e in entries if not any(e.matches(n) for n in names)]


def apply_to_results(results, skips=(), xfails=()):
    """For tools.conform: CheckResults -> (results kept, notes). A skipped check is dropped; an expected
    failure that fails is kept but marked passed with the note 'expected failure'; one that passes
    counts as a failure ('unexpectedly passed'), as pytest's strict xfail does."""
    kept, notes = [], []
    for r in results:
        names = (r.check, f"{r.backend}:{r.check}")
        skip = first_match(skips, *names)
        if skip:
            notes.append(f"{r.check} [{r.backend}]: skipped ({skip.source}: {skip.reason})")
            continue
        xfail = first_match(xfails, *names)
        if xfail:
            r.detail = (f"{r.detail}; " if r.detail else "") + (
                f"expected failure ({xfail.source}: {xfail.reason})"
                if not r.passed
                else f"unexpectedly passed: remove {xfail.source}"
            )
            notes.append(f"{r.check} [{r.backend}]: {r.detail}")
            r.passed = not r.passed
        kept.append(r)
    for kind, entries in (("skip", skips), ("expected-failure", xfails)):
        for e in unmatched(entries, [n for r in results for n in (r.check, f"{r.backend}:{r.check}")]):
            notes.append(f"{e.source}: {kind} entry {e.pattern!r} matches no check")
    return kept, notes


def apply_to_not_run(not_run, skips=()):
    """For tools.conform: the checks that did not run, less those a skip list leaves out."""
    return [n for n in not_run if not first_match(skips, n.check, f"{n.backend}:{n.check}")]


# ----------------------------------------------------------------------------- pytest hooks
def pytest_addoption(parser):
    group = parser.getgroup("llmc-ports", "llmc port lists")
    group.addoption(
        "--port-skips",
        action="append",
        default=[],
        metavar="FILE",
        help="the port's skip list: tests matching a line are skipped with its comment as reason",
    )
    group.addoption(
        "--port-xfails",
        action="append",
        default=[],
        metavar="FILE",
        help="the port's expected failures: tests matching a line are strict xfail",
    )


def pytest_collection_modifyitems(config, items):
    for option, make_marker in (
        ("port_skips", lambda e: pytest.mark.skip(reason=f"port skip list {e.source}: {e.reason}")),
        (
            "port_xfails",
            lambda e: pytest.mark.xfail(reason=f"port expected failure {e.source}: {e.reason}", strict=True),
        ),
    ):
        entries = [e for path in config.getoption(option) for e in read_list(path)]
        if not entries:
            continue
        for item in items:
            entry = first_match(entries, item.nodeid, item.name)
            if entry:
                item.add_marker(make_marker(entry))
        for e in unmatched(entries, [n for item in items for n in (item.nodeid, item.name)]):
            warnings.warn(PortListWarning(f"{e.source}: {e.pattern!r} matches no collected test"), stacklevel=2)
