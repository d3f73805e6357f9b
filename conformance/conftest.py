"""pytest wiring of the conformance suite: which backends and fixtures, one recorder, the reports.

    pytest conformance/ [--backend NAME ...] [--fixture DIR ...] [--report-json PATH] [--report-md PATH]

--backend (repeatable) defaults to every builtin backend; one that cannot run here is SKIPPED with its
reason, never passed. --fixture (repeatable) defaults to the committed fixtures plus fixtures/gpt2_124M
where `make fixtures` made it; any llm.c-format directory works, with or without manifest.json.
Every check result is recorded (the model checks as each backend x fixture run finishes, the kernel checks
through the `recorder` fixture); the session ends with a table of all of them and of the checks that did
not run, and the JSON / markdown reports when asked for (written also after each backend x fixture's model
checks, so what was judged survives whatever happens later).
"""

from pathlib import Path

from conformance.environment import require_project_environment, use_fixed_seeds

require_project_environment()  # before the imports only the project's venv provides
use_fixed_seeds()

import pytest

from backends.base import BackendUnavailable
from backends.registry import BACKEND_OPTION_HELP, SUITE_BACKENDS, get_backend
from conformance.checks import Recorder
from conformance.fixture import FIXTURE_OPTION_HELP, default_fixture_dirs, load_fixture
from conformance.model_checks import run_model
from conformance.report import format_table, suite_meta, summary, write_json, write_markdown

_SESSION = pytest.StashKey[dict]()

# a port's own skip / expected-failure lists: --port-skips FILE, --port-xfails FILE
pytest_plugins = ["conformance.port_lists"]


def pytest_addoption(parser):
    group = parser.getgroup("llmc", "llmc conformance")
    group.addoption("--backend", action="append", metavar="NAME", help=BACKEND_OPTION_HELP)
    group.addoption("--fixture", action="append", metavar="DIR", help=FIXTURE_OPTION_HELP)
    group.addoption("--report-json", metavar="PATH", help="write every check's result as JSON")
    group.addoption("--report-md", metavar="PATH", help="write the support matrix as markdown")


def pytest_configure(config):
    # recorder, backends (name -> description or the reason it is unavailable), caches of loaded things
    config.stash[_SESSION] = {
        "recorder": Recorder(),
        "backends": {},
        "fixtures": {},
        "model_results": {},
        "not_run": [],
    }


def _session(request):
    return request.config.stash[_SESSION]


@pytest.hookimpl(trylast=True)  # after @pytest.mark.parametrize: ids read test_gradient[dwte-cpu-tiny-bytes]
def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        names = metafunc.config.getoption("backend") or list(SUITE_BACKENDS)
        metafunc.parametrize("backend", names, indirect=True, scope="session")
    if "llmc_fixture" in metafunc.fixturenames:
        dirs = [Path(d) for d in (metafunc.config.getoption("fixture") or default_fixture_dirs())]
        metafunc.parametrize("llmc_fixture", dirs, indirect=True, scope="session", ids=[d.name for d in dirs])


@pytest.fixture(scope="session")
def backend(request):
    """A backend by name (parametrized); skipped, with the reason, where it cannot run."""
    known = _session(request)["backends"]
    try:
        b = get_backend(request.param)
    except BackendUnavailable as e:
        known[request.param] = f"unavailable: {e}"
        pytest.skip(f"backend {request.param} unavailable: {e}")
    known[request.param] = b.description or b.name
    return b


@pytest.fixture(scope="session")
def llmc_fixture(request):
    """A loaded fixture directory (parametrized), loaded once per session."""
    cache = _session(request)["fixtures"]
    if request.param not in cache:
        cache[request.param] = load_fixture(request.param)
    return cache[request.param]


@pytest.fixture(scope="session")
def recorder(request):
    return _session(request)["recorder"]


class ModelResults(dict):
    """check name -> CheckResult; a check the run did not make is skipped (the backend does not support
    what it needs) or an error (the backend raised), with the reason."""

    def __init__(self, results, not_run):
        super().__init__((r.check, r) for r in results)
        self.not_run = {n.check: n for n in not_run}

    def __missing__(self, check):
        n = self.not_run.get(check)
        if n is None:
            raise KeyError(check)
        if n.verdict == "skipped":
            pytest.skip(n.reason)
        raise RuntimeError(f"{check} not reached: {n.reason}")


@pytest.fixture
def model_results(request, backend, llmc_fixture):
    """ModelResults of run_model(backend, fixture), run once per (backend, fixture). Checks that did not
    run skip (unsupported) or error (any other exception), with the reason."""
    session = _session(request)
    key = (backend.name, str(llmc_fixture.path))
    if key not in session["model_results"]:
        run = run_model(backend, llmc_fixture)
        session["model_results"][key] = ModelResults(run.results, run.not_run)
        session["not_run"] += run.not_run
        for result in run.results:
            session["recorder"].add(result)
        _write_reports(request.config, session)
    return session["model_results"][key]


def _write_reports(config, session):
    json_path, md_path = config.getoption("report_json"), config.getoption("report_md")
    if not (json_path or md_path):
        return []
    meta = suite_meta(session["backends"], source="pytest conformance/", not_run=session["not_run"])
    results = session["recorder"].results
    if json_path:
        write_json(results, json_path, meta)
    if md_path:
        write_markdown(results, md_path, meta)
    return [p for p in (json_path, md_path) if p]


def pytest_terminal_summary(terminalreporter, config):
    session = config.stash[_SESSION]
    results = session["recorder"].results
    if not results and not session["not_run"]:
        return
    terminalreporter.section("llmc conformance checks")
    terminalreporter.write_line(format_table(results, session["not_run"]))
    terminalreporter.write_line(summary(results, session["not_run"]))
    for path in _write_reports(config, session):
        terminalreporter.write_line(f"wrote {path}")
