"""Data-parallel processes: who am I (rank), how many are we, and one id shared by all.

One process per GPU, as llm.c. The launcher decides the ranks; this module reads them the way users'
launchers already set them, and shares one opaque id (NCCL's unique id, made by rank 0) with every rank:

    torchrun-style   RANK, WORLD_SIZE, LOCAL_RANK (+ MASTER_ADDR, MASTER_PORT for the TCP rendezvous)
    mpirun           OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK (Open MPI) or PMI_RANK/PMI_SIZE (MPICH);
                     the id travels by MPI (mpi4py), used for nothing else
    none             one process: rank 0 of 1

    group = process_group()                       # from the environment
    shared = share_id(group, make_id, "tcp")      # "tcp", "file:PATH" or "mpi"; make_id runs on rank 0 only

Multi-node works by the same two means: the launcher sets the variables on every node; MASTER_ADDR must
be reachable from them all (TCP), or PATH must be on a filesystem they share (file).
NVLink multicast stays off in every process (NCCL_NVLS_ENABLE=0 and its peers): it can take a shared
host's GPUs out of service; keep_multicast_off() sets the variables where the user has not.
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
import socket
import struct
import time
from typing import Callable

# NVLink multicast off: NCCL, PyTorch's symmetric memory, NVSHMEM (never cuMulticastCreate)
MULTICAST_OFF = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
RENDEZVOUS_TIMEOUT_S = 300.0
RENDEZVOUS_METHODS = ("tcp", "file:PATH", "mpi")


class RendezvousError(RuntimeError):
    """The ranks could not agree: a bad variable, a timeout, an unreachable rank 0."""


@dataclass(frozen=True)
class ProcessGroup:
    rank: int
    world_size: int
    local_rank: int  # the GPU this process uses on its node
    launcher: str  # "torchrun", "mpirun" or "single"

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, validates, samples and writes checkpoints."""
        return self.rank == 0


def _int_env(env, name):
    value = env.get(name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RendezvousError(f"environment variable {name}={value!r} is not an integer") from None


def process_group(env=None) -> ProcessGroup:
    """This process's place, read from the launcher's environment variables."""
    env = os.environ if env is None else env
    if "RANK" in env or "WORLD_SIZE" in env:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
        launcher = "torchrun"
    elif "OMPI_COMM_WORLD_RANK" in env:
        names = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK")
        launcher = "mpirun"
    elif "PMI_RANK" in env:
        names = ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID")
        launcher = "mpirun"
    else:
        return ProcessGroup(0, 1, 0, "single")
    rank, world_size = _int_env(env, names[0]), _int_env(env, names[1])
    local_rank = _int_env(env, names[2]) if names[2] in env else rank
    if not (world_size >= 1 and 0 <= rank < world_size and local_rank >= 0):
        raise RendezvousError(f"{names[0]}={rank}, {names[1]}={world_size}: need 0 <= rank < world size")
    return ProcessGroup(rank, world_size, local_rank, launcher)


def keep_multicast_off(env=None) -> None:
    env = os.environ if env is None else env
    for name, value in MULTICAST_OFF.items():
        env.setdefault(name, value)


def share_id(
    group: ProcessGroup,
    make_id: Callable[[], bytes],
    method: str = "tcp",
    timeout: float = RENDEZVOUS_TIMEOUT_S,
    env=None,
) -> bytes:
    """make_id() on rank 0, its bytes on every rank. method: "tcp" (rank 0 serves MASTER_ADDR:MASTER_PORT),
    "file:PATH" (rank 0 writes PATH, unique to the run, on a shared filesystem) or "mpi" (mpi4py)."""
    if group.world_size == 1:
        return make_id()
    env = os.environ if env is None else env
    if method == "tcp":
        return _share_tcp(group, make_id, env, timeout)
    if method.startswith("file:") and len(method) > 5:
        return _share_file(group, make_id, Path(method[5:]), timeout)
    if method == "mpi":
        return _share_mpi(group, make_id)
    raise RendezvousError(f"rendezvous {method!r}: use one of {', '.join(RENDEZVOUS_METHODS)}")


def _address(env):
    host = env.get("MASTER_ADDR", "127.0.0.1")
    port = _int_env(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500
    return host, port


def _share_tcp(group, make_id, env, timeout):
    host, port = _address(env)
    deadline = time.monotonic() + timeout
    if group.is_main:
        payload = make_id()
        with socket.create_server(("", port), reuse_port=False) as server:
            server.settimeout(timeout)
            for _ in range(group.world_size - 1):
                try:
                    connection, _ = server.accept()
                except socket.timeout:
                    raise RendezvousError(
                        f"rank 0: not every rank connected to port {port} within {timeout:g} s"
                    ) from None
                with connection:
                    connection.sendall(struct.pack("<I", len(payload)) + payload)
        return payload
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(1.0, deadline - time.monotonic())) as c:
                return _receive(c, host, port)
        except (ConnectionRefusedError, socket.timeout, OSError) as e:
            if time.monotonic() > deadline:
                raise RendezvousError(
                    f"rank {group.rank}: no rank 0 at {host}:{port} within {timeout:g} s ({e})"
                ) from None
            time.sleep(0.1)


def _receive(connection, host, port):
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack("<I", data[:4])[0]:
        chunk = connection.recv(4096)
        if not chunk:
            raise ConnectionResetError(f"rank 0 at {host}:{port} closed the connection early")
        data += chunk
    return data[4 : 4 + struct.unpack("<I", data[:4])[0]]


def _share_file(group, make_id, path, timeout):
    if group.is_main:
        payload = make_id()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(struct.pack("<I", len(payload)) + payload)
        os.replace(tmp, path)  # the others never see a half-written id
        return payload
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RendezvousError(f"rank {group.rank}: {path} did not appear within {timeout:g} s")
        time.sleep(0.1)
    data = path.read_bytes()
    if len(data) < 4 or len(data) != 4 + struct.unpack("<I", data[:4])[0]:
        raise RendezvousError(f"{path}: not an id written by rank 0 ({len(data)} bytes)")
    return data[4:]


def _share_mpi(group, make_id):
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RendezvousError("rendezvous mpi needs mpi4py (pip install mpi4py), or use tcp / file:PATH") from e
    comm = MPI.COMM_WORLD
    if (comm.Get_rank(), comm.Get_size()) != (group.rank, group.world_size):
        raise RendezvousError(
            f"MPI says rank {comm.Get_rank()} of {comm.Get_size()}, the environment says "
            f"{group.rank} of {group.world_size}"
        )
    return comm.bcast(make_id() if group.is_main else None, root=0)


def rank_environment(rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int, env=None) -> dict:
    """The torchrun-style variables of one rank, over env (default: this process's), multicast off."""
    child = dict(os.environ if env is None else env)
    child.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(local_rank),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    keep_multicast_off(child)
    return child


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch_local(
    argv: list[str],
    nproc: int,
    nnodes: int = 1,
    node_rank: int = 0,
    master_addr: str = "127.0.0.1",
    master_port: int | None = None,
    timeout: float | None = None,
) -> int:
    """Runs argv as nproc ranks of this node (ranks node_rank*nproc ...), each in its own process group;
    when one fails, the others are stopped. -> the first non-zero exit status, else 0."""
    import signal
    import subprocess

    port = master_port or free_port()
    world = nproc * nnodes
    procs = [
        subprocess.Popen(
            argv, env=rank_environment(node_rank * nproc + i, world, i, master_addr, port), start_new_session=True
        )
        for i in range(nproc)
    ]
    deadline = None if timeout is None else time.monotonic() + timeout
    status = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            if None not in codes:
                break
            failed = [c for c in codes if c not in (None, 0)]
            if failed or (deadline is not None and time.monotonic() > deadline):
                status = failed[0] if failed else 124
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return status or next((p.returncode for p in procs if p.returncode), 0)
