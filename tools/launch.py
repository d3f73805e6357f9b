"""Run a command as N data-parallel ranks on this node, torchrun-style (one process per GPU).

    python -m tools.launch --nproc 2 -- python -m tools.train --backend cuda ...
    python -m tools.launch --nproc 8 --nnodes 2 --node-rank 0 --master-addr HOST -- ...   (on each node)

Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (the TCP rendezvous of
backends/distributed.py) and NVLink multicast off. `mpirun -np N python -m tools.train ...` works too.
When one rank fails, the others are stopped, and the exit status is the failing rank's.
"""

import sys

from backends.distributed import launch_local
from tools.options import Parser, UsageError, run_main


def build_parser():
    p = Parser(prog="python -m tools.launch", description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, required=True, help="ranks on this node (one per GPU)")
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1", help="rank 0's host, reachable from every node")
    p.add_argument("--master-port", type=int, default=None, help="default: a free port (single node only)")
    p.add_argument("command", nargs="+", help="the command every rank runs (after --)")
    return p


def launch(args):
    if args.nproc < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise UsageError("--nproc, --nnodes >= 1 and 0 <= --node-rank < --nnodes")
    if args.nnodes > 1 and args.master_port is None:
        raise UsageError("--master-port: every node must be told the same port")
    return launch_local(args.command, args.nproc, args.nnodes, args.node_rank, args.master_addr, args.master_port)


def main(argv=None):
    return run_main("tools.launch", launch, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
