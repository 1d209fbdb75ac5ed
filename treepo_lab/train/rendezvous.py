"""torchrun's c10d rendezvous with every TCP store listening on one address, never on all interfaces.

torch's TCPStore server listens on `*:<port>` whatever host it is given, and torchelastic's rendezvous
unpickles the state it reads from its store: whoever reaches that port could run code in the launcher. The
`treepo` rendezvous backend is torch's c10d backend (same state, same store protocol) whose two stores (the
rendezvous store, and the store the ranks bootstrap from) are bound here and handed to TCPStore as an
already listening socket (TCPStore's `master_listen_fd`):

- one node (`treepo-lab train trainer.nproc=N`, sweep trials): endpoint 127.0.0.1:0, local address
  127.0.0.1, and the ranks' gloo / NCCL sockets on the loopback interface (`loopback_env`);
- several nodes (`python -m treepo_lab.train.torchrun --rdzv-endpoint HOST:PORT ...`): the rendezvous store
  on HOST's address, the bootstrap store on this node's `--local-addr` (default: the address of the
  interface that routes to HOST).
"""
from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import socket

BACKEND = "treepo"
DEFAULT_PORT = 29400  # torch's c10d default


def address(host: str) -> str:
    """The IP address `host` names (an IP is returned as it is)."""
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]


def listen_store(host: str, port: int, timeout_s: float = 60.0):
    """A TCPStore server listening on host:port only (port 0: a free one)."""
    from torch.distributed import TCPStore

    ip = address(host)
    if ipaddress.ip_address(ip).is_unspecified:
        raise ValueError(f"the rendezvous address {host!r} means every interface: give this node's address")
    sock = socket.create_server((ip, port), family=socket.AF_INET6 if ":" in ip else socket.AF_INET)
    try:
        return TCPStore(ip, sock.getsockname()[1], is_master=True, wait_for_workers=False,
                        timeout=datetime.timedelta(seconds=timeout_s), master_listen_fd=sock.fileno())
    except BaseException:
        sock.close()
        raise
    finally:
        sock.detach()  # the store owns the socket now (it closes it when it goes)


def _route_to(ip: str) -> str:
    """This node's address on the interface that reaches `ip` (no packet is sent)."""
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((ip, 9))
        return s.getsockname()[0]


def create_handler(params):
    """torch's c10d dynamic rendezvous handler over stores bound by `listen_store`."""
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous.c10d_rendezvous_backend import C10dRendezvousBackend
    from torch.distributed.elastic.rendezvous.dynamic_rendezvous import create_handler as dynamic_handler
    from torch.distributed.elastic.rendezvous.utils import _matches_machine_hostname, parse_rendezvous_endpoint

    host, port = parse_rendezvous_endpoint(params.endpoint, default_port=DEFAULT_PORT)
    timeout_s = params.get_as_int("read_timeout", 60)
    given = params.get_as_bool("is_host")
    store = None
    if _matches_machine_hostname(host) if given is None else given:
        try:
            store = listen_store(host, port, timeout_s)
        except OSError:  # another agent on this node hosts it (torch's c10d backend does the same)
            if given:
                raise
    if store is None:
        store = TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=timeout_s))
    # the ranks bootstrap from the store of the group's first agent, at its local address (MASTER_ADDR);
    # with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 rank 0 would open one of its own on every interface
    params.local_addr = params.local_addr or _route_to(address(host))
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "0"

    class Backend(C10dRendezvousBackend):  # c10d's, under the name torch checks against the requested one
        name = BACKEND

    handler = dynamic_handler(store, Backend(store, params.run_id), params)
    handler._create_tcp_store_server = lambda addr, port_: listen_store(addr, port_)
    return handler


def register() -> None:
    from torch.distributed.elastic.rendezvous import rendezvous_handler_registry

    rendezvous_handler_registry.register(BACKEND, create_handler)


def loopback_interface() -> str:
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address.startswith("127.") for a in addrs):
            return name
    return "lo"


@contextlib.contextmanager
def loopback_env():
    """The ranks started inside inherit gloo's and NCCL's interface: loopback (one node)."""
    lo = loopback_interface()
    saved = {k: os.environ.get(k) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}
    os.environ.update(dict.fromkeys(saved, lo))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
