"""The data-parallel plumbing that needs no GPU: ranks from each launcher's variables, the id rendezvous
(TCP, shared file) across real processes, and the local launcher stopping the others when a rank fails."""

import os
import sys

import pytest

from backends.distributed import MULTICAST_OFF, ProcessGroup, RendezvousError, launch_local, process_group, share_id


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, ProcessGroup(0, 1, 0, "single")),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, ProcessGroup(3, 8, 1, "torchrun")),
        ({"RANK": "1", "WORLD_SIZE": "2"}, ProcessGroup(1, 2, 1, "torchrun")),
        (
            {"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "16", "OMPI_COMM_WORLD_LOCAL_RANK": "5"},
            ProcessGroup(5, 16, 5, "mpirun"),
        ),
        ({"PMI_RANK": "1", "PMI_SIZE": "2"}, ProcessGroup(1, 2, 1, "mpirun")),
    ],
)
def test_process_group_from_launchers(env, want):
    assert process_group(env) == want


@pytest.mark.parametrize(
    "env, field",
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0"}, "WORLD_SIZE"),
    ],
)
def test_process_group_rejects_bad_variables(env, field):
    with pytest.raises(RendezvousError, match=field):
        process_group(env)


SHARE = """
import os, sys
from backends.distributed import process_group, share_id
group = process_group()
got = share_id(group, lambda: os.urandom(128), sys.argv[1], timeout=60)
open(os.path.join(sys.argv[2], f"rank{group.rank}"), "wb").write(got)
assert os.environ["NCCL_NVLS_ENABLE"] == "0"
"""


@pytest.mark.parametrize("method", ["tcp", "file"])
def test_every_rank_gets_rank_zeros_id(tmp_path, method):
    spec = "tcp" if method == "tcp" else f"file:{tmp_path / 'id'}"
    status = launch_local([sys.executable, "-c", SHARE, spec, str(tmp_path)], nproc=3, timeout=120)
    assert status == 0
    ids = [(tmp_path / f"rank{r}").read_bytes() for r in range(3)]
    assert len(ids[0]) == 128 and ids[0] == ids[1] == ids[2]


def test_single_process_needs_no_rendezvous():
    assert share_id(ProcessGroup(0, 1, 0, "single"), lambda: b"id", "mpi") == b"id"


def test_rendezvous_errors_name_the_problem(tmp_path):
    group = ProcessGroup(1, 2, 1, "torchrun")
    with pytest.raises(RendezvousError, match="did not appear"):
        share_id(group, bytes, f"file:{tmp_path / 'never'}", timeout=0.3)
    with pytest.raises(RendezvousError, match="no rank 0"):
        share_id(group, bytes, "tcp", timeout=0.3, env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"})
    with pytest.raises(RendezvousError, match="use one of"):
        share_id(group, bytes, "carrier-pigeon")


def test_launcher_stops_the_others_when_a_rank_fails(tmp_path):
    script = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(7)\ntime.sleep(60)"
    status = launch_local([sys.executable, "-c", script], nproc=3, timeout=30)
    assert status == 7


def test_launcher_sets_the_torchrun_variables_and_multicast_off(tmp_path):
    script = (
        "import os, json; json.dump({k: os.environ[k] for k in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', "
        f"'MASTER_PORT', *{tuple(MULTICAST_OFF)!r})}}, open(os.path.join({str(tmp_path)!r}, "
        "'r' + os.environ['RANK']), 'w'))"
    )
    assert launch_local([sys.executable, "-c", script], nproc=2, nnodes=2, node_rank=1, master_port=1234) == 0
    import json

    seen = [json.loads((tmp_path / f"r{r}").read_text()) for r in (2, 3)]
    assert [s["LOCAL_RANK"] for s in seen] == ["0", "1"] and {s["WORLD_SIZE"] for s in seen} == {"4"}
    assert all(s[name] == value for s in seen for name, value in MULTICAST_OFF.items())
    assert os.environ.get("RANK") is None  # the launcher's own environment is untouched
