"""Rendezvous stores that listen on one address only.

torch's TCPStore server has no authentication, and it listens on every interface whatever its ``host`` argument:
both its libuv and its legacy backend bind the wildcard address (measured with ``ss -ltn``: ``*:PORT``). So every
store server a TRAIT run starts is made here, on a socket bound to the address the run names, and handed to
TCPStore as ``master_listen_fd``: 127.0.0.1 for a run on one machine, the rendezvous host (``TRAIT_RDZV_HOST``, the
first node of a Slurm allocation, ``MASTER_ADDR``) for a run across nodes.

torchrun's own stores (the c10d rendezvous host, and the store its rank-0 agent shares with the workers) bind every
interface, so the launchers run torchrun as a client of a store made here (``--rdzv-conf=is_host=0``) and with
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``; rank 0 of the workers then serves the process group's store itself
(``process_group_store``), on ``MASTER_ADDR``, which torchrun sets to the agent's ``--local-addr``.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

# The environment under which torchrun neither hosts a store for its workers nor points them at its own: rank 0 of
# the workers serves one (process_group_store).
TORCHRUN_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def store_server(host: str, port: int, timeout: timedelta, world_size: int | None = None):
    """A TCPStore server listening on ``host``:``port`` only (port 0: a free one, then ``store.port``)."""
    from torch.distributed import TCPStore

    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        raise
    bound_port = sock.getsockname()[1]
    # detach: the store owns the descriptor from here on (Python must not close it when `sock` is collected)
    return TCPStore(host, bound_port, world_size, is_master=True, timeout=timeout, wait_for_workers=False,
                    master_listen_fd=sock.detach())


def process_group_store(timeout: timedelta):
    """The store of this worker's process group, from torchrun's (or init_distributed's) RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT: rank 0 serves it on MASTER_ADDR, unless torchrun's agent already serves it
    (``TORCHELASTIC_USE_AGENT_STORE``); every other rank connects to it."""
    from torch.distributed import TCPStore

    env = os.environ
    host, port, world_size = env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"])
    if int(env["RANK"]) == 0 and env.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return store_server(host, port, timeout, world_size)
    return TCPStore(host, port, world_size, is_master=False, timeout=timeout)
