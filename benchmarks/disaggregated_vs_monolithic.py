"""Disaggregated (remote expert servers) vs monolithic (local experts), same engine, one run, per transport.

    python benchmarks/disaggregated_vs_monolithic.py [--seqs 64 256] [--new-tokens 32] [--fault-seconds 40]
                                                     [--transport grpc shm] [--openai-streams 64] [--json]
                                                     [--micro-batches N [N ...]] [--micro-batch-min-tokens 128]
                                                     [--replicas 2]

Every figure is measured for each --transport on the same expert processes (they offer both): grpc, and
shm (shared-memory slots + unix-socket doorbell, eaas/rpc/slot_transport.py). Also per transport: one
layer's dispatch (RemoteExpertBackend.combine of a 64-token decode batch over the 2 groups, minus the
slower group's expert compute measured in this process on one thread) divided by a bare round trip of the
same bytes on the same transport (benchmarks/transport_roundtrip.py's echo servers); target <= 1.5.
--json prints every ratio as one JSON object instead of the text lines.
Then, per transport, `eaas up --transport T` serving --openai-streams concurrent OpenAI streams divided by
transformers.generate batched on the same prompts (benchmarks/up_vs_generate.py; target >= 1.0), and,
when --seqs includes --openai-streams, the disaggregated engine's own decode tok/s at that concurrency over the
same generate figure (`engine_without_http_over_generate`): the ceiling of any HTTP front-end change.

Prints decode tok/s of both backends at each concurrency and their ratio (targets: >= 0.85 at 64,
>= 0.90 at 256), then the throughput while one expert replica is SIGKILLed every 10 s divided by the
throughput of an identical fleet without faults, their rounds interleaved, which retires the killed
replica's twin at each kill (benchmarks/fault_interleaved.py; target >= 0.98, 0 failed requests). Expert servers are separate processes on 127.0.0.1, started with
`eaas expert-server`, 2 replicas per group (3 for the fault run, so that 4 kills in 40 s never take a
group's last replica).

Killed replicas are not restarted on this machine unless --restart-on-this-machine is given: on a
cluster the replacement boots on another node, while here its boot (torch import + weight load, ~15 s of
CPU on 2 cores) competes with the serving processes, even under SCHED_IDLE (measured: booting one
replica alone costs ~27% of the throughput of the 20 s it overlaps). Re-admission of a restarted
replica is covered by tests/data_path/test_remote_backend.py.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

from eaas.openmp import quiet_idle_workers

quiet_idle_workers()  # as the eaas command does, before torch loads libgomp

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # transport_roundtrip beside this file

from eaas.engine.factory import engine_with_backend, monolithic_engine
from eaas.engine.scheduler import ScheduleLimits
from eaas.engine.sequence import SamplingParams
from eaas.rpc.micro_batches import DEFAULT_MICRO_BATCH_MIN_TOKENS, default_micro_batches
from eaas.rpc.slot_transport import SlotTransport, make_transport
from eaas.gateway.remote_backend import RemoteExpertBackend
from eaas.local_ports import any_free_port
from eaas.model.checkpoint import Checkpoint
from eaas.model.tiny import write_tiny_model
from eaas.topology import expert_groups, format_expert_ids
from eaas.up import Fleet, wait_healthy
from fault_interleaved import Side, fault_run  # noqa: E402  (beside this file)


KV_CACHE_BYTES = 256 << 20  # per engine: a 256 x 56-token batch needs ~60 MB; the default share of memory
                            # (10% per engine, 5+ engines in this process) got the run OOM-killed


def prompts(n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, 250, (int(k),), generator=g).tolist() for k in torch.randint(8, 25, (n,), generator=g)]


def decode_tokens_per_s(engine, batch, new_tokens) -> tuple[float, int]:
    """Generated tokens / wall time for the whole batch (prefill included, same for both backends)."""
    params = SamplingParams(max_tokens=new_tokens, ignore_eos=True)
    engine.generate(batch[:4], SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    seqs = [engine.add_request(p, params).seq for p in batch]
    while engine.has_unfinished():
        engine.step()
    elapsed = time.perf_counter() - start
    failed = sum(1 for s in seqs if len(s.output_ids) != new_tokens)
    return sum(len(s.output_ids) for s in seqs) / elapsed, failed


class ExpertFleet:
    def __init__(self, model: str, experts_per_server: int, replicas: int, base_port: int):
        self.fleet = Fleet()
        self.model = model
        self.members = []  # (name, group experts, address)
        num = Checkpoint(model).config.num_local_experts
        port = base_port
        for g in expert_groups(num, experts_per_server):
            for r in range(replicas):
                self.members.append((f"{g.name}-r{r}", g.experts, f"127.0.0.1:{port}"))
                port += 1
        self.procs = {}
        self.metrics = {}  # name -> the server's /metrics URL
        for name, experts, addr in self.members:
            self.start(name, experts, addr)
        for name, _, addr in self.members:
            wait_healthy(self.fleet, name, self.procs[name], addr, 180)

    def start(self, name, experts, addr, background: bool = False):
        # A replacement starts under SCHED_IDLE: on a cluster it would boot on another node, not steal this one's
        # CPU (nice 19 still took wake-up slices from the serving processes); the killer makes it normal once healthy.
        argv = (["chrt", "--idle", "0"] if background else []) + [
            sys.executable, "-P", "-m", "eaas.cli", "expert-server", "--model", self.model,
            "--experts", format_expert_ids(experts), "--host", "127.0.0.1", "--port", addr.rsplit(":", 1)[1],
            "--metrics-port", str(self._metrics_port(name))]
        self.procs[name] = self.fleet.spawn(name, argv, threads=1)  # 2 cores: one OpenMP thread per server

    def _metrics_port(self, name: str) -> int:
        taken = {int(u.rsplit(":", 1)[1].split("/")[0]) for u in self.metrics.values()}  # chosen, maybe not bound yet
        port = any_free_port("127.0.0.1", taken | {int(a.rsplit(":", 1)[1]) for _, _, a in self.members})
        self.metrics[name] = f"http://127.0.0.1:{port}/metrics"
        return port

    def compute_seconds(self) -> dict[str, tuple[float, float]]:
        """name -> (sum, count) of its eaas_expert_combine_seconds: the compute time the server measured."""
        return {name: (scrape(url, "eaas_expert_combine_seconds_sum"), scrape(url, "eaas_expert_combine_seconds_count"))
                for name, url in self.metrics.items()}

    def groups(self):
        by = {}
        for _, experts, addr in self.members:
            by.setdefault(experts, []).append(addr)
        return list(by.items())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, nargs="*", default=[64, 256], help="concurrencies to measure (none: skip)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--micro-batches", type=int, nargs="+",
                    help="micro-batches per step at most (ping-pong overlap; default: the gateway's for each transport, "
                         "eaas/rpc/micro_batches.py); several values are measured in the same run, each N other than "
                         "the transport's default as a variant '<transport>-mbN' (the fault run uses the first)")
    ap.add_argument("--micro-batch-min-tokens", type=int, default=DEFAULT_MICRO_BATCH_MIN_TOKENS,
                    help="split a step only while each micro-batch gets this many tokens (default "
                         f"{DEFAULT_MICRO_BATCH_MIN_TOKENS}, the gateway's; 1 = split every step)")
    ap.add_argument("--experts-per-server", type=int, default=4,
                    help="experts per group: 4 = 2 groups (2 RPCs per layer), 8 = 1 group (1 RPC per layer)")
    ap.add_argument("--replicas", type=int, default=2,
                    help="replicas per group for the throughput and dispatch figures (default 2; the fault run uses 3)")
    ap.add_argument("--fault-seconds", type=float, default=40.0, help="0 skips the fault run")
    ap.add_argument("--fault-reference-keeps-all", action="store_true",
                    help="the fault-free reference fleet keeps every replica instead of retiring the killed one's twin")
    ap.add_argument("--restart-on-this-machine", action="store_true",
                    help="restart each killed replica here (SCHED_IDLE while it boots) instead of leaving it dead")
    ap.add_argument("--base-port", type=int, default=24000)
    ap.add_argument("--transport", nargs="+", default=["grpc", "shm"], choices=["grpc", "shm"],
                    help="expert data paths to measure, each on the same expert processes (default: grpc shm)")
    ap.add_argument("--json", action="store_true", help="print the ratios as one JSON object")
    ap.add_argument("--dispatch-iters", type=int, default=200, help="0 skips the dispatch ratio")
    ap.add_argument("--openai-streams", type=int, default=64,
                    help="concurrent OpenAI streams through `eaas up` vs transformers.generate (0 skips)")
    args = ap.parse_args()
    report: dict = {"model": f"tiny mixtral hidden {args.hidden_size}, 4 layers, 8 experts top-2, fp32",
                    "experts_per_server": args.experts_per_server, "replicas": args.replicas, "new_tokens": args.new_tokens,
                    "micro_batches": args.micro_batches,
                    "micro_batch_min_tokens": args.micro_batch_min_tokens, "transports": {}}
    say = (lambda *a, **k: None) if args.json else print
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("eaas").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as model:
        write_tiny_model(model, "mixtral", seed=0, hidden_size=args.hidden_size, layers=4, experts=8, top_k=2)
        experts = ExpertFleet(model, experts_per_server=args.experts_per_server, replicas=args.replicas,
                              base_port=args.base_port)
        try:
            limits = ScheduleLimits(max_num_seqs=max(args.seqs + [64]), max_batched_tokens=8192)
            mono = monolithic_engine(model, limits=limits, kv_cache_bytes=KV_CACHE_BYTES)
            ckpt = Checkpoint(model)
            say(f"model: {report['model']}; "
                f"{-(-8 // args.experts_per_server)} expert group(s) x {args.replicas} replicas (separate processes); {args.new_tokens} new tokens per sequence; "
                f"micro-batches {args.micro_batches or 'the gateway default'} (split while each gets >= "
                f"{args.micro_batch_min_tokens} tokens)")
            backends = {name: remote_backend(experts, ckpt, name) for name in args.transport}
            engines = {name + (f"-mb{mb}" if mb != default_micro_batches(name) else ""):
                       engine_with_backend(ckpt, backend, limits=limits, micro_batches=mb,
                                           kv_cache_bytes=KV_CACHE_BYTES,
                                           micro_batch_min_tokens=args.micro_batch_min_tokens)
                       for name, backend in backends.items()
                       for mb in args.micro_batches or [default_micro_batches(name)]}
            for n in args.seqs:
                batch = prompts(n)
                target = 0.85 if n <= 64 else 0.90
                # monolithic, then each transport, then the same in reverse (A B C C B A): the machine's
                # drift during the run weighs on every variant alike; each figure is the mean of its two runs
                order = [("monolithic", mono), *engines.items()]
                runs: dict[str, list] = {}
                for name, engine in order + order[::-1]:
                    runs.setdefault(name, []).append(decode_tokens_per_s(engine, batch, args.new_tokens))
                m = statistics.fmean(r[0] for r in runs["monolithic"])
                for name in engines:
                    d, failed = statistics.fmean(r[0] for r in runs[name]), sum(r[1] for r in runs[name])
                    row = report["transports"].setdefault(name, {})
                    row[f"disaggregated_over_monolithic_{n}"] = round(d / m, 3)
                    row[f"tok_s_{n}"] = {"monolithic": round(m, 1), "disaggregated": round(d, 1), "failed": failed}
                    say(f"{n:4d} seqs [{name:4s}]: monolithic {m:8.1f} tok/s  disaggregated {d:8.1f} tok/s  "
                        f"ratio {d / m:5.2f} (target >= {target:.2f}), failed {failed}")
            for name, backend in backends.items() if args.dispatch_iters > 0 else ():
                ratio, detail = dispatch_ratio(backend, ckpt, name, args.dispatch_iters, experts)
                report["transports"].setdefault(name, {})["dispatch_over_bare_roundtrip"] = round(ratio, 2)
                report["transports"][name]["dispatch"] = detail
                report["transports"][name]["dispatch_over_bare_roundtrip_server_compute"] = \
                    detail["dispatch_over_bare_roundtrip_server_compute"]
                say(f"one layer's dispatch [{name:4s}]: {detail['dispatch_ms']:.3f} ms (combine p50 "
                    f"{detail['combine_p50_ms']:.3f} ms - compute {detail['compute_ms']:.3f} ms) / bare round trip "
                    f"of {detail['bytes']} bytes {detail['bare_p50_ms']:.3f} ms = {ratio:.2f} (target <= 1.5); "
                    f"with the servers' own compute ({detail['server_compute_ms']:.3f} ms): "
                    f"{detail['dispatch_over_bare_roundtrip_server_compute']:.2f}")
            for backend in backends.values():
                backend.close()
        finally:
            experts.fleet.stop()
        if args.fault_seconds > 0:
            fault_runs(model, ckpt, limits, args, report, say)
        if args.openai_streams > 0:
            from up_vs_generate import up_vs_generate
            for name, row in up_vs_generate(model, args.openai_streams, args.new_tokens, args.transport, say=say).items():
                mine = report["transports"].setdefault(name, {})
                mine.update(up_openai_over_generate=row["up_openai_over_generate"], up_openai=row)
                engine = mine.get(f"tok_s_{args.openai_streams}")
                if engine:  # the same engine and fleet shape driven in this process: no HTTP, no streams
                    ceiling = engine["disaggregated"] / row["tok_s"][row["generate_best"]]
                    mine["engine_without_http_over_generate"] = round(ceiling, 3)
                    say(f"  [{name}] the disaggregated engine alone at {args.openai_streams} seqs (no HTTP) / "
                        f"generate: {ceiling:.2f}: what any front-end change could reach at most")
    if args.json:
        print(json.dumps(report))


def scrape(url: str, sample: str) -> float:
    """One sample's value from a Prometheus text page (0 when absent)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(sample + " "):
                return float(line.split()[1])
    return 0.0


def remote_backend(experts: ExpertFleet, ckpt: Checkpoint, transport: str) -> RemoteExpertBackend:
    backend = RemoteExpertBackend(experts.groups(), fingerprint=ckpt.fingerprint(), layers=ckpt.moe_layers(),
                                  transport=make_transport(transport))
    if isinstance(backend.transport, SlotTransport):
        assert all(backend.transport.uses_slots(a) for _, addrs in experts.groups() for a in addrs)
    return backend


def dispatch_ratio(backend: RemoteExpertBackend, ckpt: Checkpoint, transport: str, iters: int,
                   fleet: ExpertFleet) -> tuple[float, dict]:
    """(one layer's dispatch p50 minus expert compute) / bare round trip p50 of the same bytes, same transport.

    The compute subtracted is measured in this process on one thread, back to back (hot caches); the detail
    also gives the ratio with the compute the servers measured themselves for the same calls (their
    eaas_expert_combine_seconds), which runs cold there (README "Micro-batches that take turns")."""
    with torch.inference_mode():  # as the engine calls the backend
        return _dispatch_ratio(backend, ckpt, transport, iters, fleet)


def _dispatch_ratio(backend, ckpt, transport, iters, fleet) -> tuple[float, dict]:
    from dispatch_overhead import timed  # the same warm-up + perf_counter sampling
    from transport_roundtrip import measure_echo

    from eaas.model.experts import load_expert_weights

    gen = torch.Generator().manual_seed(0)
    tokens, width = 64, ckpt.config.hidden_size
    hidden = torch.randn(tokens, width, generator=gen)
    ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(tokens)]).to(torch.int32)
    weights = torch.softmax(torch.randn(tokens, 2, generator=gen), dim=-1)
    layer = min(ckpt.moe_layers())
    groups = [list(e) for e, _ in fleet.groups()]
    before = fleet.compute_seconds()
    combine = timed(lambda: backend.combine(layer, hidden, ids, weights), iters)
    after = fleet.compute_seconds()
    local = load_expert_weights(ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each expert server computes (one OpenMP thread)
    try:
        compute = []
        for group_experts in groups:
            in_group = torch.isin(ids, torch.tensor(group_experts, dtype=torch.int32))
            rows = in_group.any(dim=1)
            masked = torch.where(in_group, ids, -1)[rows]
            compute.append(statistics.median(timed(
                lambda: local.combine(layer, hidden[rows], masked, weights[rows]), iters)))
    finally:
        torch.set_num_threads(threads)
    nbytes = hidden.nbytes + ids.nbytes + weights.nbytes
    bare = measure_echo(transport, nbytes, iters)
    dispatch = statistics.median(combine) - max(compute)
    served = {}  # group experts -> mean compute per request over its replicas, as the servers measured it
    for name, experts, _ in fleet.members:
        seconds, count = (after[name][i] - before[name][i] for i in (0, 1))
        total = served.setdefault(tuple(experts), [0.0, 0.0])
        total[0] += seconds
        total[1] += count
    server_compute = max(s / c for s, c in served.values() if c)
    return dispatch / bare, {"bytes": nbytes, "combine_p50_ms": round(1e3 * statistics.median(combine), 3),
                             "compute_ms": round(1e3 * max(compute), 3), "dispatch_ms": round(1e3 * dispatch, 3),
                             "bare_p50_ms": round(1e3 * bare, 3), "server_compute_ms": round(1e3 * server_compute, 3),
                             "dispatch_over_bare_roundtrip_server_compute": round(
                                 (statistics.median(combine) - server_compute) / bare, 2)}


def fault_runs(model: str, ckpt: Checkpoint, limits: ScheduleLimits, args, report: dict, say) -> None:
    """Per transport: a fresh 3-replica fleet loses replicas while a reference fleet of the same shape
    (shared by the transports, never killed) runs interleaved rounds (benchmarks/fault_interleaved.py)."""
    reference = ExpertFleet(model, experts_per_server=args.experts_per_server, replicas=3,
                            base_port=args.base_port + 50)
    try:
        for i, name in enumerate(args.transport):
            faulty = ExpertFleet(model, experts_per_server=args.experts_per_server, replicas=3,
                                 base_port=args.base_port + 50 * (i + 2))
            try:
                backends = [remote_backend(fleet, ckpt, name) for fleet in (reference, faulty)]
                mb = args.micro_batches[0] if args.micro_batches else default_micro_batches(name)
                sides = [Side(engine_with_backend(ckpt, backend, limits=limits, micro_batches=mb,
                                                  kv_cache_bytes=KV_CACHE_BYTES,
                                                  micro_batch_min_tokens=args.micro_batch_min_tokens),
                              fleet) for backend, fleet in zip(backends, (reference, faulty))]
                retired: set[str] = set()

                def retire(replica: str, backend=backends[0]) -> None:  # the reference fleet shrinks gracefully
                    retired.add(replica)
                    backend.update_table([(e, [a for n, ex, a in reference.members if ex == e and n not in retired])
                                          for e, _ in reference.groups()])
                report["transports"].setdefault(name, {}).update(fault_run(
                    *sides, prompts(64), args.new_tokens, args.fault_seconds, args.restart_on_this_machine, say,
                    f"[{name}] ", retire=None if args.fault_reference_keeps_all else retire))
                for backend in backends:
                    backend.close()
            finally:
                faulty.fleet.stop()
    finally:
        reference.fleet.stop()


if __name__ == "__main__":
    main()
