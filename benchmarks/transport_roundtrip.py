"""Two-process round trip of N bytes on each candidate data-plane transport, with CPU per round trip.

    .venv/bin/python -P benchmarks/transport_roundtrip.py [--iters 400] [--sizes 4096,65536,262144,1048576]

NIXL is not a dependency of eaas: `pip install nixl-cu12==1.5.1` first to measure it (skipped otherwise).

A client (this process) sends N bytes to a server process, which answers with N bytes; p50/p99 round trip
and CPU seconds (user + system, all threads) per round trip of each process, for:
  grpc       bare Python gRPC unary echo (sync server, thread pool; bytes in, bytes out, no protobuf)
  shm        same-host shared-memory slots (multiprocessing.shared_memory) + a unix-socket doorbell:
             the client copies N bytes into the server's slot and rings; the server copies them into the
             client's reply slot and rings back. Both sides block in recv(): nothing polls.
  nixl       NIXL (nixl_cu12, UCX backend, DRAM): the client WRITEs into the server's registered slot with a
             notification; the server WRITEs back into the client's registered buffer with a notification.
             NIXL's Python API has no blocking wait: notifications and transfer states are polled, here with
             an exponential back-off sleep (20 us .. 1 ms), so the polling cost shows up in the CPU figures.
             Variants: nixl-pt (UCX progress thread, poll() timeout 1 ms) and nixl (no progress thread:
             get_new_notifs / check_xfer_state drive UCX progress from the caller), and nixl-spin (no
             progress thread, polls without sleeping: NIXL's latency floor, paid with a full core per side).
Also prints the idle CPU of a NIXL agent's progress thread with the Python API's default delay (0: its
poll() never sleeps) and with 1 ms, over 2 s with nothing to do.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import threading
import time
from multiprocessing import shared_memory

MAX_BYTES = 1 << 20
NIXL_PROGRESS_DELAY_US = 1000
FIRST_PAUSE_S = {"nixl": 20e-6, "nixl-pt": 20e-6, "nixl-spin": 0.0}  # nixl-spin: the latency floor, at full CPU  # progress thread's poll() timeout; the Python API hard-codes 0 (a spinning thread)


def cpu_seconds() -> float:
    """User + system CPU of this process, all threads."""
    return time.process_time()


# ---- NIXL helpers ------------------------------------------------------------------------------------
def nixl_agent(name: str, progress_thread: bool, delay_us: int = NIXL_PROGRESS_DELAY_US):
    """A UCX-only NIXL agent; the progress thread's poll() timeout is delay_us, not the API's hard-coded 0."""
    from nixl_cu12 import _api

    class DelayedConfig(_api.nixlBind.nixlAgentConfig):
        def __setattr__(self, key, value):
            super().__setattr__(key, delay_us if key == "pthrDelay" else value)

    real = _api.nixlBind.nixlAgentConfig
    _api.nixlBind.nixlAgentConfig = DelayedConfig
    try:
        return _api.nixl_agent(name, _api.nixl_agent_config(enable_prog_thread=progress_thread,
                                                             enable_listen_thread=False, backends=["UCX"]))
    finally:
        _api.nixlBind.nixlAgentConfig = real


def wait_notif(agent, peer: str, deadline_s: float = 30.0) -> bytes:
    """The next notification from peer; polls with back-off sleeps (NIXL offers no blocking wait)."""
    pending = getattr(agent, "_pending", None)
    if pending is None:
        pending = agent._pending = []
    end = time.monotonic() + deadline_s
    pause = agent._first_pause
    while not pending:
        pending.extend(agent.get_new_notifs().get(peer, []))
        if pending:
            break
        if time.monotonic() > end:
            raise TimeoutError(f"no notification from {peer} in {deadline_s} s")
        time.sleep(pause)
        pause = min(pause * 2, 1e-3) if pause else 0.0
    return pending.pop(0)


def wait_xfer(agent, handle, state: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    pause = agent._first_pause
    while state == "PROC":
        if time.monotonic() > end:
            raise TimeoutError("transfer still in PROC")
        time.sleep(pause)
        pause = min(pause * 2, 1e-3) if pause else 0.0
        state = agent.check_xfer_state(handle)
    if state != "DONE":
        raise RuntimeError(f"transfer ended in {state}")


def nixl_handles(agent, local, remote_descs, peer: str, sizes: list[int], notif: bytes):
    """One prepared WRITE handle per size: local[0:n] -> the peer's slot[0:n]."""
    import torch  # noqa: F401  (descs from tensors)
    handles = {}
    for n in sizes:
        src = agent.get_xfer_descs(local[:n])
        addr, _, dev = remote_descs
        dst = agent.get_xfer_descs([(addr, n, dev)], "DRAM")
        handles[n] = agent.initialize_xfer("WRITE", src, dst, peer, notif)
    return handles


def nixl_server(control, kind: str, sizes: list[int]) -> None:
    import torch
    agent = nixl_agent("server", kind == "nixl-pt")
    agent._first_pause = FIRST_PAUSE_S[kind]
    slot = torch.zeros(MAX_BYTES, dtype=torch.uint8)
    reg = agent.register_memory(slot)
    control.send((agent.get_agent_metadata(), (slot.data_ptr(), MAX_BYTES, 0)))
    client_md, client_slot = control.recv()
    agent.add_remote_agent(client_md)
    handles = nixl_handles(agent, slot, client_slot, "client", sizes, b"rep")
    control.send("ready")

    def serve():
        while True:
            msg = wait_notif(agent, "client", deadline_s=3600)
            if msg == b"stop":
                return
            n = int(msg[3:].decode())
            h = handles[n]
            wait_xfer(agent, h, agent.transfer(h, b"rep"))
    answer_control(control, serve)
    del reg


def answer_control(control, serve) -> None:
    """Run serve() in a thread; answer 'cpu' requests on the control pipe until 'stop'."""
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    while True:
        cmd = control.recv()
        if cmd == "cpu":
            control.send(cpu_seconds())
        elif cmd == "stop":
            t.join(timeout=5)
            control.send("bye")
            return


class NixlClient:
    def __init__(self, control, kind: str, sizes: list[int]):
        import torch
        self.agent = nixl_agent("client", kind == "nixl-pt")
        self.agent._first_pause = FIRST_PAUSE_S[kind]
        self.send_buf = torch.zeros(MAX_BYTES, dtype=torch.uint8)
        self.recv_buf = torch.zeros(MAX_BYTES, dtype=torch.uint8)
        self.regs = [self.agent.register_memory(self.send_buf), self.agent.register_memory(self.recv_buf)]
        server_md, server_slot = control.recv()
        self.agent.add_remote_agent(server_md)
        control.send((self.agent.get_agent_metadata(), (self.recv_buf.data_ptr(), MAX_BYTES, 0)))
        assert control.recv() == "ready"
        self.handles = nixl_handles(self.agent, self.send_buf, server_slot, "server", sizes, b"req")

    def roundtrip(self, payload) -> bytes:
        n = len(payload)
        self.send_buf[:n].numpy()[:] = memoryview(payload)
        h = self.handles[n]
        wait_xfer(self.agent, h, self.agent.transfer(h, b"req%d" % n))
        assert wait_notif(self.agent, "server") == b"rep"
        return self.recv_buf[:n].numpy().tobytes()

    def close(self):
        self.agent.send_notif("server", b"stop")


# ---- shared memory + doorbell -------------------------------------------------------------------------
def shm_server(control, names: tuple[str, str], bell: socket.socket) -> None:
    request, reply = (shared_memory.SharedMemory(name=n) for n in names)

    def serve():
        while True:
            head = bell.recv(8)
            n = int.from_bytes(head, "little")
            if not head or n == (1 << 63):
                return
            reply.buf[:n] = request.buf[:n]
            bell.sendall(head)
    control.send("ready")
    answer_control(control, serve)
    request.close()
    reply.close()


class ShmClient:
    def __init__(self, control):
        self.request = shared_memory.SharedMemory(create=True, size=MAX_BYTES)
        self.reply = shared_memory.SharedMemory(create=True, size=MAX_BYTES)
        self.bell, self.server_bell = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.control = control

    def server_args(self):
        return (self.request.name, self.reply.name), self.server_bell

    def roundtrip(self, payload) -> bytes:
        n = len(payload)
        self.request.buf[:n] = payload
        self.bell.sendall(n.to_bytes(8, "little"))
        self.bell.recv(8)
        return bytes(self.reply.buf[:n])

    def close(self):
        self.bell.sendall((1 << 63).to_bytes(8, "little"))
        for m in (self.request, self.reply):
            m.close()
            m.unlink()


# ---- gRPC ---------------------------------------------------------------------------------------------
def grpc_server(control, port_out) -> None:
    from concurrent import futures

    import grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[
        ("grpc.max_receive_message_length", 4 * MAX_BYTES), ("grpc.max_send_message_length", 4 * MAX_BYTES)])
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    control.send(port)
    answer_control(control, lambda: None)
    server.stop(0)


class GrpcClient:
    def __init__(self, port: int):
        import grpc
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_receive_message_length", 4 * MAX_BYTES), ("grpc.max_send_message_length", 4 * MAX_BYTES)])
        self.echo = self.channel.unary_unary("/bench.Echo/Echo")

    def roundtrip(self, payload) -> bytes:
        return self.echo(payload, timeout=30)

    def close(self):
        self.channel.close()


# ---- driver -------------------------------------------------------------------------------------------
def start(kind: str, sizes: list[int]):
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    if kind == "grpc":
        proc = ctx.Process(target=grpc_server, args=(theirs, None), daemon=True)
        proc.start()
        client = GrpcClient(ours.recv())
    elif kind == "shm":
        client = ShmClient(ours)
        names, bell = client.server_args()
        proc = ctx.Process(target=shm_server, args=(theirs, names, bell), daemon=True)
        proc.start()
        assert ours.recv() == "ready"
    else:
        proc = ctx.Process(target=nixl_server, args=(theirs, kind, sizes), daemon=True)
        proc.start()
        client = NixlClient(ours, kind, sizes)
    return client, proc, ours


def measure(kind: str, sizes: list[int], iters: int, warmup: int = 30) -> list[dict]:
    client, proc, control = start(kind, sizes)
    rows = []
    try:
        for n in sizes:
            payload = os.urandom(n)
            for _ in range(warmup):
                assert client.roundtrip(payload) == payload
            control.send("cpu")
            server_cpu0, client_cpu0 = control.recv(), cpu_seconds()
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                out = client.roundtrip(payload)
                times.append(time.perf_counter() - t0)
            client_cpu = cpu_seconds() - client_cpu0
            control.send("cpu")
            server_cpu = control.recv() - server_cpu0
            assert out == payload
            times.sort()
            rows.append({"transport": kind, "bytes": n, "p50_ms": 1e3 * statistics.median(times),
                         "p99_ms": 1e3 * times[int(0.99 * (len(times) - 1))],
                         "client_cpu_ms_per_rt": 1e3 * client_cpu / iters,
                         "server_cpu_ms_per_rt": 1e3 * server_cpu / iters})
    finally:
        client.close()
        control.send("stop")
        control.recv()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return rows


def measure_echo(kind: str, nbytes: int, iters: int, warmup: int = 30) -> float:
    """p50 seconds of a bare round trip of nbytes on grpc or shm (used by disaggregated_vs_monolithic.py)."""
    client, proc, control = start(kind, [nbytes])
    payload = os.urandom(nbytes)
    try:
        for _ in range(warmup):
            client.roundtrip(payload)
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            client.roundtrip(payload)
            times.append(time.perf_counter() - t0)
    finally:
        client.close()
        control.send("stop")
        control.recv()
        proc.join(timeout=10)
    return statistics.median(times)


def idle_progress_thread_cpu(delay_us: int, seconds: float = 2.0) -> float:
    """CPU seconds per second of wall time used by one idle NIXL agent with a progress thread."""
    agent = nixl_agent("idle", progress_thread=True, delay_us=delay_us)
    time.sleep(0.2)
    c0, t0 = cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    used = (cpu_seconds() - c0) / (time.monotonic() - t0)
    del agent
    return used


def idle_in_child(delay_us: int) -> float:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(idle_progress_thread_cpu, (delay_us,))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--sizes", default="4096,65536,262144,1048576")
    ap.add_argument("--transports", default="grpc,shm,nixl,nixl-pt,nixl-spin")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.transports.split(",")
    if any(k.startswith("nixl") for k in kinds) and importlib.util.find_spec("nixl_cu12") is None:
        print("nixl_cu12 is not installed (pip install nixl-cu12==1.5.1): measuring grpc and shm only", file=sys.stderr)
        kinds = [k for k in kinds if not k.startswith("nixl")]
    rows = []
    for kind in kinds:
        rows += measure(kind, sizes, args.iters)
    idle = {}
    if any(k.startswith("nixl") for k in kinds):
        idle = {f"nixl_idle_progress_thread_cpu_per_s_delay_{d}us": idle_in_child(d) for d in (0, 1000)}
    if args.json:
        print(json.dumps({"rows": rows, **idle}))
        return
    print(f"{'transport':<10}{'bytes':>9}{'p50 ms':>9}{'p99 ms':>9}{'client CPU ms/rt':>18}{'server CPU ms/rt':>18}")
    for r in rows:
        print(f"{r['transport']:<10}{r['bytes']:>9}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}"
              f"{r['client_cpu_ms_per_rt']:>18.3f}{r['server_cpu_ms_per_rt']:>18.3f}")
    for k, v in idle.items():
        print(f"{k}: {v:.3f} CPU s/s")
    print(f"(iters {args.iters} per size, 2 shared cores, {time.strftime('%Y-%m-%d %H:%M')} UTC)", file=sys.stderr)


if __name__ == "__main__":
    main()
