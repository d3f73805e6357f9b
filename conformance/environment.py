"""How the suite runs: inside the project's environment, with fixed seeds.

require_project_environment() stops at once, with the command to use instead, when pytest runs
outside the project's environment.

The design card's own `make && pytest conformance/` meets a `pytest` on the PATH that is not the
venv's; without this check it dies on the first import the venv alone provides (tiktoken, cffi).
Imports nothing but the standard library, so it works under any Python.
"""

import importlib.util
import sys

REQUIRED = ("numpy", "cffi", "tiktoken", "hypothesis")


def missing_requirements():
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def outside_environment_message(missing):
    return (
        f"llmc-conformance: {sys.executable} lacks {', '.join(missing)}: this pytest runs outside the "
        "project's environment; run `make` once, then `. .venv/bin/activate` or `.venv/bin/python -m pytest ...`"
    )


def require_project_environment():
    """Exit (status 4, pytest's usage error) with one line naming what to run when a package is missing."""
    missing = missing_requirements()
    if missing:
        print(outside_environment_message(missing), file=sys.stderr)
        raise SystemExit(4)


def use_fixed_seeds():
    """hypothesis draws the same examples every run (a failure reproduces); no deadline, as first calls
    load libraries."""
    from hypothesis import settings

    settings.register_profile("llmc", derandomize=True, deadline=None, print_blob=True)
    settings.load_profile("llmc")
