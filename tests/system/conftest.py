"""`eaas up` as a user runs it: a subprocess owning expert-server and gateway processes on 127.0.0.1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from servers import free_port_run


class UpFleet:
    def __init__(self, model_dir, experts_per_server=4, replicas=2, gateways=1, extra=(), default_ports=False):
        """default_ports: let `eaas up` choose every port, as a user who passes no port flag does;
        model_dir None: no --model, so `eaas up` serves its built-in demo model."""
        base = free_port_run(32)
        ports = [] if default_ports else ["--expert-base-port", str(base), "--grpc-port", str(base + 20),
                                          "--http-port", str(base + 25)]
        model = [] if model_dir is None else ["--model", str(model_dir)]
        argv = [sys.executable, "-P", "-m", "eaas.cli", "up", *model, "--experts-per-server", str(experts_per_server),
                "--expert-replicas", str(replicas), "--gateways", str(gateways), *ports, *extra]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("eaas up exited:\n" + "".join(self.lines))
            self.lines.append(line)
            if line.startswith("ready;"):
                break
        else:
            raise RuntimeError("eaas up not ready:\n" + "".join(self.lines))
        # the addresses `eaas up` printed: "  gateway-0: grpc 127.0.0.1:P  http http://127.0.0.1:Q/v1"
        printed = [re.match(r"\s+gateway-\d+: grpc (\S+)\s+http (\S+)/v1", line) for line in self.lines]
        self.gateways = [m.group(1) for m in printed if m]
        self.http = next(m.group(2) for m in printed if m)

    def expert_addresses(self) -> dict[str, list[str]]:
        """group name -> replica addresses, read off `eaas up`'s own output."""
        out = {}
        for line in self.lines:
            m = re.match(r"\s+(g\d+): experts \S+=(\S+)", line)
            if m:
                out[m.group(1)] = m.group(2).split(",")
        return out

    def process_listening_on(self, address: str) -> psutil.Process:
        port = int(address.rsplit(":", 1)[1])
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in child.net_connections()):
                    return child
            except psutil.Error:
                continue
        raise LookupError(f"no child of eaas up listens on {address}")

    def gateway_process(self, index: int = 0) -> psutil.Process:
        return self.process_listening_on(self.gateways[index])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def up_fleet():
    fleets = []

    def start(*args, **kwargs) -> UpFleet:
        fleet = UpFleet(*args, **kwargs)
        fleets.append(fleet)
        return fleet

    yield start
    for f in fleets:
        f.stop()
