"""`eaas up`: the whole system on one machine — expert servers as separate processes, then gateway(s).

Waits until every process answers gRPC health, prints the addresses, and stops everything on
Ctrl-C/SIGTERM. `--demo` streams one completion through the SDK and exits (what `make run` does).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from eaas.auth import API_KEY_ENV, resolve_api_key
from eaas.child_lifetime import die_with_parent
from eaas.errors import UserError
from eaas.local_ports import choose_ports
from eaas.rpc.micro_batches import add_micro_batch_arguments, check_micro_batch_arguments
from eaas.topology import expert_groups, format_expert_ids

# the built-in model: a byte-level Mixtral trained on Python's standard library (scripts/train_demo_model.py),
# shipped as package data
BUILTIN_DIR = Path(__file__).resolve().parent / "model" / "demo"
DEMO_PROMPT = "def "
# sampling, not greedy: greedy decoding of a small byte model falls into loops within a few lines
DEMO_SAMPLING = dict(max_tokens=160, temperature=0.8, top_p=0.95, seed=0, ignore_eos=True)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="DIR", help="HF checkpoint directory (default: the built-in demo model, "
                   "a small Mixtral trained on Python's standard library)")
    p.add_argument("--experts-per-server", type=int, default=4, help="experts per expert group (default 4)")
    p.add_argument("--expert-replicas", type=int, default=2, help="replicas (processes) per group (default 2)")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes sharing one MemPool (default 1)")
    p.add_argument("--host", default="127.0.0.1", help="address every process binds (default 127.0.0.1)")
    p.add_argument("--grpc-port", type=int, help="first gateway's gRPC port (default 50050, or a free port "
                   "when 50050 is taken); a given port that is taken is an error")
    p.add_argument("--http-port", type=int, help="first gateway's HTTP port (default 8000, or a free port "
                   "when 8000 is taken); a given port that is taken is an error")
    p.add_argument("--expert-base-port", type=int, help="expert servers use consecutive ports from here "
                   "(default: free ports); a given port that is taken is an error")
    p.add_argument("--redis", metavar="URL", help="Redis for the MemPool; with --gateways > 1 and no URL a "
                   "local redis-server is started")
    p.add_argument("--dtype", default="float32", help="float32|bfloat16|float16")
    p.add_argument("--kv-cache-bytes", metavar="BYTES", help="each gateway's KV budget (see `eaas gateway --help`)")
    p.add_argument("--max-queued-requests", type=int, help="each gateway's queue bound (see `eaas gateway --help`)")
    p.add_argument("--transport", default="auto", choices=["auto", "shm", "grpc"],
                   help="expert data path between gateways and expert servers: auto = shared-memory slots when "
                        "both ends offer them (they do on one host), shm = slots required, grpc (default auto)")
    add_micro_batch_arguments(p)  # each gateway's
    p.add_argument("--demo", action="store_true", help="stream one completion through the SDK, then stop")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to wait for health (default 180)")
    p.add_argument("--tls", action="store_true", help="make a private CA and certificates under the run directory "
                   "(printed): gateways serve TLS, gateway <-> expert servers use mutual TLS; clients pass "
                   "--tls-ca-file with the CA's path")
    p.add_argument("--api-key", help="the gateways require 'Authorization: Bearer KEY' (default $EAAS_API_KEY); "
                   "clients read it from --api-key or $EAAS_API_KEY")


@dataclass
class Fleet:
    procs: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    tmp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="eaas-up-"))

    def spawn(self, name: str, argv: list[str], threads: int | None = None) -> subprocess.Popen:
        log = open(Path(self.tmp) / f"{name}.log", "wb")
        env = dict(os.environ)
        if threads and "OMP_NUM_THREADS" not in os.environ:  # the user's setting wins
            env["OMP_NUM_THREADS"] = str(threads)
        # own session: a terminal's Ctrl-C reaches only us, and we stop the children in order;
        # die_with_parent: if we are killed outright, the kernel stops them instead
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                preexec_fn=die_with_parent(os.getpid()))
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 5) -> str:
        path = Path(self.tmp) / f"{name}.log"
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, grace_s: float = 10.0) -> None:
        for _, p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for _, p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def threads_per_process(processes: int, cores: int | None = None) -> int:
    """Compute threads for each of `processes` torch processes sharing this machine's cores."""
    cores = cores or os.cpu_count() or 1
    return max(1, cores // max(1, processes))


def listens_on(proc: subprocess.Popen, port: int) -> bool:
    """Whether `proc` itself holds the listening socket: a health answer on a port that another
    process (another `eaas up`) already had must not count as ours."""
    import psutil

    try:
        conns = psutil.Process(proc.pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in conns)


def make_tls(fleet: Fleet, host: str) -> Path:
    """A private CA and one certificate (server and client use) for every process, under the run directory."""
    import socket

    from eaas.private_ca import CertificateAuthority

    return CertificateAuthority.create("eaas up CA").write_secret(
        Path(fleet.tmp) / "tls", "eaas-up", [host, "127.0.0.1", "localhost", socket.gethostname()])


def tls_flags(tls_dir: Path | None) -> list[str]:
    if tls_dir is None:
        return []
    return ["--tls-cert-file", str(tls_dir / "tls.crt"), "--tls-key-file", str(tls_dir / "tls.key"),
            "--tls-ca-file", str(tls_dir / "ca.crt")]


def _health_channel(address: str, tls_dir: Path | None):
    import grpc

    if tls_dir is None:
        return grpc.insecure_channel(address)
    creds = grpc.ssl_channel_credentials((tls_dir / "ca.crt").read_bytes(), (tls_dir / "tls.key").read_bytes(),
                                         (tls_dir / "tls.crt").read_bytes())
    return grpc.secure_channel(address, creds)


def wait_healthy(fleet: Fleet, name: str, proc: subprocess.Popen, address: str, timeout_s: float,
                 tls_dir: Path | None = None) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    port = int(address.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_s
    with _health_channel(address, tls_dir) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UserError(f"{name} exited with code {proc.returncode}: {fleet.log_tail(name, 3)}")
            try:
                serving = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == \
                    health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                serving = False
            if serving and listens_on(proc, port):
                return
            time.sleep(0.2)
    raise UserError(f"{name} at {address} not healthy after {timeout_s:.0f}s")


def ensure_all_alive(fleet: Fleet) -> None:
    for name, proc in fleet.procs:
        if proc.poll() is not None:
            raise UserError(f"{name} exited with code {proc.returncode}: {fleet.log_tail(name, 3)}")


def builtin_model() -> Path:
    if not (BUILTIN_DIR / "model.safetensors").is_file():
        raise UserError(f"the built-in demo model is missing from {BUILTIN_DIR} (a broken install?); pass --model DIR")
    return BUILTIN_DIR


def run(args) -> int:
    from eaas.model.checkpoint import Checkpoint
    from eaas.model.families import num_routed_experts

    for flag in ("experts_per_server", "expert_replicas", "gateways"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1")
    check_micro_batch_arguments(args)
    if args.api_key is not None:
        # via the environment, not argv: the key stays out of `ps`; the gateways and the demo client read it
        os.environ[API_KEY_ENV] = resolve_api_key(args.api_key)
    model = Path(args.model) if args.model else builtin_model()
    num_experts = num_routed_experts(Checkpoint(model).config)
    groups = expert_groups(num_experts, args.experts_per_server)
    n_experts, n_gw = len(groups) * args.expert_replicas, args.gateways
    ports = choose_ports(args.host, [
        ("--expert-base-port", None if args.expert_base_port is None else args.expert_base_port + i, None)
        for i in range(n_experts)
    ] + [("--grpc-port", None if args.grpc_port is None else args.grpc_port + i, 50050 + i) for i in range(n_gw)]
      + [("--http-port", None if args.http_port is None else args.http_port + i, 8000 + i) for i in range(n_gw)])
    expert_ports, grpc_ports, http_ports = ports[:n_experts], ports[n_experts:n_experts + n_gw], ports[n_experts + n_gw:]
    fleet = Fleet()
    py = [sys.executable, "-P", "-m", "eaas.cli"]  # -P: a cwd holding operator/ must not shadow the stdlib
    # torch processes sharing cores must split them: OpenMP threads spinning on an oversubscribed
    # machine make a 2 ms combine take 100+ ms
    threads = threads_per_process(len(groups) * args.expert_replicas + args.gateways)
    try:
        tls_dir = make_tls(fleet, args.host) if args.tls else None
        redis_url = args.redis
        if args.gateways > 1 and not redis_url:
            redis_url = _start_local_redis(fleet, args.host)
        spec, next_port = [], iter(expert_ports)
        experts: list[tuple[str, subprocess.Popen, str]] = []
        for g in groups:
            addrs = []
            for r in range(args.expert_replicas):
                port = next(next_port)
                name, address = f"expert-{g.name}-r{r}", f"{args.host}:{port}"
                argv = py + ["expert-server", "--model", str(model), "--experts", format_expert_ids(g.experts),
                             "--host", args.host, "--port", str(port), "--metrics-port", "0", "--group", g.name,
                             "--deployment", "local", "--dtype", args.dtype,
                             "--transport", "grpc" if args.transport == "grpc" else "auto", *tls_flags(tls_dir)]
                if redis_url:
                    argv += ["--redis", redis_url]
                experts.append((name, fleet.spawn(name, argv, threads), address))
                addrs.append(address)
            spec.append(f"{format_expert_ids(g.experts)}={','.join(addrs)}")
        for name, proc, address in experts:
            wait_healthy(fleet, name, proc, address, args.ready_timeout, tls_dir)
        gateways = []
        for i in range(args.gateways):
            name = f"gateway-{i}"
            grpc_addr = f"{args.host}:{grpc_ports[i]}"
            argv = py + ["gateway", "--model", str(model), "--expert-servers", ";".join(spec), "--host", args.host,
                         "--grpc-port", str(grpc_ports[i]), "--http-port", str(http_ports[i]),
                         "--dtype", args.dtype, "--micro-batch-min-tokens", str(args.micro_batch_min_tokens),
                         "--transport", args.transport, *tls_flags(tls_dir)]
            if args.micro_batches is not None:  # else the gateway's default for --transport (one rule, one place)
                argv += ["--micro-batches", str(args.micro_batches)]
            if redis_url:
                argv += ["--redis", redis_url]
            if args.kv_cache_bytes:
                argv += ["--kv-cache-bytes", args.kv_cache_bytes]
            if args.max_queued_requests is not None:
                argv += ["--max-queued-requests", str(args.max_queued_requests)]
            gateways.append((name, fleet.spawn(name, argv, threads), grpc_addr))
        for name, proc, address in gateways:
            wait_healthy(fleet, name, proc, address, args.ready_timeout, tls_dir)
        ensure_all_alive(fleet)  # an expert server may have died while the gateways loaded
        print(f"eaas up: {len(groups)} expert groups x {args.expert_replicas} replicas "
              f"({len(experts)} expert processes), model {model}", flush=True)
        for g, s in zip(groups, spec):
            print(f"  {g.name}: experts {s}", flush=True)
        scheme = "https" if tls_dir else "http"
        for i, (_, _, address) in enumerate(gateways):
            print(f"  gateway-{i}: grpc {address}  http {scheme}://{args.host}:{http_ports[i]}/v1", flush=True)
        if tls_dir is not None:
            print(f"  tls: CA {tls_dir / 'ca.crt'} (clients: --tls-ca-file {tls_dir / 'ca.crt'}); gateway <-> "
                  "expert servers: mutual TLS", flush=True)
        if redis_url:
            print(f"  mempool: {redis_url}", flush=True)
        print(f"  logs: {fleet.tmp}", flush=True)
        if args.demo:
            has_tokenizer = (model / "tokenizer.json").is_file() or (model / "tokenizer_config.json").is_file()
            return _demo([a for _, _, a in gateways], has_tokenizer, tls_dir)
        stop = _catch_stop_signals()  # before "ready": a SIGTERM right after it must stop us in order
        print("ready; Ctrl-C stops everything", flush=True)
        _wait_for_signal(fleet, stop)
        return 0
    finally:
        fleet.stop()


def _start_local_redis(fleet: Fleet, host: str) -> str:
    import socket

    binary = shutil.which("redis-server")
    if binary is None:
        raise UserError("--gateways > 1 needs a shared MemPool: pass --redis URL or install redis-server")
    with socket.socket() as s:
        s.bind((host, 0))
        port = s.getsockname()[1]
    fleet.spawn("redis", [binary, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return f"redis://{host}:{port}/0"
        except OSError:
            time.sleep(0.1)
    raise UserError("the local redis-server did not start")


def _demo(addresses: list[str], has_tokenizer: bool, tls_dir: Path | None) -> int:
    """Stream one sampled completion: text after the prompt when the model has a tokenizer, else token ids."""
    from eaas.client import SyncClient

    prompt = {"prompt": DEMO_PROMPT} if has_tokenizer else {"prompt_ids": [1, 17, 42]}
    settings = ", ".join(f"{k}={DEMO_SAMPLING[k]}" for k in ("temperature", "top_p", "seed"))
    print(f"\ndemo: streaming a completion of {next(iter(prompt.values()))!r} through {addresses[0]} ({settings})\n",
          flush=True)
    if has_tokenizer:
        print(DEMO_PROMPT, end="", flush=True)
    ca = str(tls_dir / "ca.crt") if tls_dir else None
    with SyncClient(addresses, timeout=300, tls_ca_file=ca) as client:
        ids = []
        for chunk in client.generate_stream(**prompt, **DEMO_SAMPLING):
            ids.extend(chunk.token_ids)
            print(chunk.text if has_tokenizer else f"{chunk.token_ids[0]} ", end="", flush=True)
        print(f"\n\ndemo: {len(ids)} tokens, finish_reason={chunk.finish_reason}", flush=True)
    return 0


def _catch_stop_signals() -> dict:
    stop = {"now": False}

    def handler(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _wait_for_signal(fleet: Fleet, stop: dict) -> None:
    reported: set[str] = set()
    while not stop["now"]:
        for name, proc in fleet.procs:
            if proc.poll() is not None and name not in reported:
                reported.add(name)
                print(f"{name} exited with code {proc.returncode}", flush=True)
        time.sleep(0.5)
