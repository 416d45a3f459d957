"""The supervisor's checks before it starts local workers: TCP source ports (127.0.0.1 only)
and ring sizes."""
from __future__ import annotations

import socket

import pytest

from support.net import HOST
from wallaroo.cluster.supervisor import SupervisorError, reserve_ports, ring_bytes


def test_port_zero_becomes_one_port_held_for_every_worker():
    ports, held = reserve_ports({"in": (HOST, 0)})
    try:
        assert ports["in"] == held[0].getsockname()[1] != 0
        # a worker binds it too, with SO_REUSEPORT, while the supervisor holds it
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind((HOST, ports["in"]))
            worker.listen(1)
    finally:
        for sock in held:
            sock.close()


def test_a_fixed_port_another_program_listens_on_is_refused_even_with_reuseport():
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind((HOST, 0))
        other.listen(1)
        port = other.getsockname()[1]
        with pytest.raises(SupervisorError, match=f"cannot listen on {HOST}:{port}.*pick a free port"):
            reserve_ports({"in": (HOST, port)})


def test_a_fixed_port_in_time_wait_is_free():
    """The server side closed first, so the port sits in TIME_WAIT, as after a stopped run."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection((HOST, port))
    served, _ = listener.accept()
    served.close()                      # the server's end closes first: TIME_WAIT on its port
    client.recv(1)
    client.close()
    listener.close()
    ports, held = reserve_ports({"in": (HOST, port)})
    assert ports == {} and held == []   # nothing to hold: the workers bind it themselves


def test_rings_shrink_as_workers_grow():
    assert ring_bytes(2) == 4 << 20
    assert all(2 * (n - 1) * ring_bytes(n) <= 64 << 20 for n in range(2, 33))
    assert ring_bytes(64) >= 1 << 20
