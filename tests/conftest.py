"""pytest wiring of the project's own tests: every builtin backend as a parameter, fixed hypothesis seeds.

The conformance suite (conformance/conftest.py) judges any backend named with --backend and reports;
these tests prove the project itself (formats, ABI, training, the harness, the oracle) on the builtin
backends, each skipped with its reason where it cannot run.
"""

import os

from conformance.environment import require_project_environment, use_fixed_seeds

require_project_environment()  # before the imports only the project's venv provides
use_fixed_seeds()

import pytest

from backends.base import BackendUnavailable
from backends.registry import BUILTIN_BACKENDS, get_backend
from conformance.checks import Recorder


@pytest.fixture(scope="session", params=BUILTIN_BACKENDS)
def backend(request):
    try:
        return get_backend(request.param)
    except BackendUnavailable as e:
        pytest.skip(f"backend {request.param} unavailable: {e}")


@pytest.fixture(scope="session", autouse=True)
def kept_port_inputs(tmp_path_factory):
    """The inputs of port calls that fail on purpose go to the session's temporary directory, not /tmp."""
    previous = os.environ.get("LLMC_PORT_KEEP_DIR")
    os.environ["LLMC_PORT_KEEP_DIR"] = str(tmp_path_factory.mktemp("failed-port-calls"))
    yield
    if previous is None:
        del os.environ["LLMC_PORT_KEEP_DIR"]
    else:
        os.environ["LLMC_PORT_KEEP_DIR"] = previous


@pytest.fixture(scope="session")
def recorder():
    """Records and asserts each check (conformance.checks.Recorder); these tests write no report."""
    return Recorder()
