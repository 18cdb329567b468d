"""The queue process with its SMTP acceptor processes (smtp.workers): what differs from one process."""

from __future__ import annotations

import os
import resource
import selectors
import signal
import smtplib
import socket
import subprocess
import time

CLIENTS = 1500


def gateway(sink_port: int, **smtp: object) -> dict:
    return {"roles": ["incoming_gateway"], "smtp": {"workers": 2, **smtp},
            "incoming_gateway": {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{sink_port}"]}}}}


def workers_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid), "-f", "smtp-worker"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_many_clients_at_once_are_all_greeted(mailfleet_factory, smtp_sink) -> None:
    """The acceptors share the listening socket and its full backlog: a burst of connects is all served."""
    server = mailfleet_factory(gateway(smtp_sink().port))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, CLIENTS + 512)), hard))
    selector = selectors.DefaultSelector()
    socks = []
    try:
        for _ in range(CLIENTS):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", server.smtp_port))
            selector.register(sock, selectors.EVENT_READ)
            socks.append(sock)
        greetings: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(greetings) < CLIENTS and time.monotonic() < deadline:
            for key, _ in selector.select(1):
                greetings.append(key.fileobj.recv(512)[:4])
                selector.unregister(key.fileobj)
    finally:
        for sock in socks:
            sock.close()
    assert len(greetings) == CLIENTS
    assert set(greetings) == {b"220 "}


def test_sighup_reaches_every_acceptor(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink()
    server = mailfleet_factory(gateway(sink.port))
    config = dict(server.config)
    config["incoming_gateway"] = {"domains": {"fwd.test": {"destinations": [f"127.0.0.1:{sink.port}"]},
                                              "added.test": {"destinations": [f"127.0.0.1:{sink.port}"]}}}
    server.reload(config)
    server.wait_for(lambda: "(2 of 2 SMTP workers)" in server.log(), what="both acceptors to reload")
    for _ in range(4):  # new connections land on either acceptor: each must know the new domain
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
            conn.sendmail("s@outside.test", ["x@added.test"], b"Subject: new domain\r\n\r\nx\r\n")
    server.wait_for(lambda: len(sink.messages) == 4, what="delivery of the four messages")


def test_a_killed_acceptor_is_replaced_and_mail_keeps_flowing(mailfleet_factory, smtp_sink) -> None:
    sink = smtp_sink()
    server = mailfleet_factory(gateway(sink.port))
    assert server.proc is not None
    server.wait_for(lambda: len(workers_of(server.proc.pid)) == 2, what="two acceptors")
    victim = workers_of(server.proc.pid)[0]
    os.kill(victim, signal.SIGKILL)
    server.wait_for(lambda: "exited with -9; starting it again" in server.log(), what="the restart")
    server.wait_for(lambda: len(workers_of(server.proc.pid)) == 2 and victim not in workers_of(server.proc.pid),
                    what="a replacement acceptor")
    for _ in range(6):
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
            conn.sendmail("s@outside.test", ["x@fwd.test"], b"Subject: still flowing\r\n\r\nx\r\n")
    server.wait_for(lambda: len(sink.messages) == 6, what="delivery after the restart")


def test_stopping_the_service_stops_the_acceptors(mailfleet_factory, smtp_sink) -> None:
    server = mailfleet_factory(gateway(smtp_sink().port))
    assert server.proc is not None
    server.wait_for(lambda: len(workers_of(server.proc.pid)) == 2, what="two acceptors")
    children = workers_of(server.proc.pid)
    assert server.stop() == 0

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    server.wait_for(lambda: all(gone(pid) for pid in children), what="the acceptors to exit")


def test_the_service_runs_under_the_batch_scheduling_policy(mailfleet_factory, smtp_sink) -> None:
    """The queue process, its acceptors and their threads (the filesystem flusher) are SCHED_BATCH, as
    `chrt -p` shows an administrator; a mail still goes through."""
    sink = smtp_sink()
    server = mailfleet_factory(gateway(sink.port))
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=10) as conn:
        conn.sendmail("a@outside.test", ["b@fwd.test"], b"Subject: batch\r\n\r\nx\r\n")  # starts the flusher
    server.wait_for(lambda: len(sink.messages) == 1, what="the relayed message")
    pids = [server.proc.pid, *workers_of(server.proc.pid)]
    assert len(pids) == 3
    threads = [int(t) for pid in pids for t in os.listdir(f"/proc/{pid}/task")]
    assert len(threads) > len(pids)
    assert {os.sched_getscheduler(tid) for tid in threads} == {os.SCHED_BATCH}


def test_receive_buffers_come_from_the_heap_not_a_mapping_each() -> None:
    """asyncio's 256 KiB recv() buffers: after heap_receive_buffers() glibc serves them from the heap instead
    of a fresh mmap each (an mmap, mremap and munmap per received segment). Only the tuned process is checked:
    where an untuned glibc puts them depends on its dynamic mmap threshold, which is glibc's, not ours."""
    import sys

    probe = (
        "import ctypes\n"
        "from appliance.service.tuning import heap_receive_buffers\n"
        "heap_receive_buffers()\n"
        "buffers = [bytearray(256 * 1024) for _ in range(8)]\n"
        "heap = next(line.split()[0] for line in open('/proc/self/maps') if line.rstrip().endswith('[heap]'))\n"
        "low, high = (int(x, 16) for x in heap.split('-'))\n"
        "where = [ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b)) for b in buffers]\n"
        "print(sum(low <= a < high for a in where))\n"
    )
    in_heap = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                 check=True).stdout)
    assert in_heap == 8
