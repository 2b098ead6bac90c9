"""`eaas gateway`: serve the dense model with remote experts (gRPC Generate + OpenAI HTTP)."""

from __future__ import annotations

import argparse
import asyncio
import logging

from eaas.auth import api_key_source
from eaas.engine.kv_budget import DEFAULT_MAX_QUEUED, describe_default
from eaas.errors import UserError
from eaas.gateway.stall import DEFAULT_STALL_TIMEOUT_S
from eaas.rpc.micro_batches import add_micro_batch_arguments, check_micro_batch_arguments
from eaas.tls import TLSFiles, add_tls_flags, tls_files_from_args

DEFAULT_MAX_STREAMS = 64

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(text: str) -> int:
    """'2GiB', '500MB', '1073741824' -> bytes."""
    t = text.strip().lower()
    digits = len(t) - len(t.lstrip("0123456789."))
    number, unit = t[:digits], t[digits:].strip()
    if not number or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GiB, 500MB, 1073741824)")
    return int(float(number) * _UNITS[unit])


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="HF checkpoint directory (dense weights are read)")
    src = p.add_argument_group("where the expert replicas are (registry first, then topology or the static list)")
    src.add_argument("--expert-servers", metavar="SPEC",
                     help="static table: '0-3=host:port,host:port;4-7=host:port' (expert ids = replicas)")
    src.add_argument("--topology", metavar="FILE",
                     help="the operator's topology.json: groups resolved via their headless Services' DNS")
    src.add_argument("--watch-endpoints", action="store_true",
                     help="with --topology: each group's replicas are the ready addresses of its Service's "
                          "Endpoints, watched through the Kubernetes API (in-cluster or $KUBECONFIG), not DNS")
    src.add_argument("--namespace", default=None,
                     help="namespace of the watched Endpoints (default: the pod's own)")
    src.add_argument("--redis", metavar="URL", help="Redis of the MemPool: registry, KV blocks, load statistics "
                     "(redis://, rediss://); without it the KV pool is in-process")
    p.add_argument("--deployment", default="local", help="deployment name (Redis key prefix), default 'local'")
    p.add_argument("--host", default="0.0.0.0", help="bind address (default 0.0.0.0)")
    p.add_argument("--grpc-port", type=int, default=50050, help="gRPC port (default 50050; 0 = any free port)")
    p.add_argument("--http-port", type=int, default=8000, help="OpenAI-compatible HTTP + /metrics port (default 8000)")
    p.add_argument("--dtype", default="float32", help="dense weights dtype: float32|bfloat16|float16")
    p.add_argument("--max-num-seqs", type=int, default=256, help="sequences per batch at most (default 256)")
    p.add_argument("--max-batched-tokens", type=int, default=4096, help="tokens per step at most (default 4096)")
    add_micro_batch_arguments(p)
    p.add_argument("--transport", default="auto", choices=["auto", "shm", "grpc"],
                   help="expert data path: auto = shared-memory slots with every expert server on this host that "
                        "offers them, gRPC with the others; shm = slots required; grpc = gRPC only (default auto)")
    p.add_argument("--kv-cache-bytes", type=parse_bytes, metavar="BYTES",
                   help="KV cache budget, preallocated at start (e.g. 2GiB, 500MB, 1073741824); default: "
                        f"{describe_default()}, capped at what --max-num-seqs full contexts can use; attention "
                        "also keeps a dense copy of the running sequences' KV, never larger than the budget "
                        "(a batch that would need more gathers its blocks)".replace("%", "%%"))
    p.add_argument("--max-queued-requests", type=int, default=DEFAULT_MAX_QUEUED,
                   help="new requests that may wait for the engine (preempted ones are not counted); more are "
                        "refused with HTTP 429 + Retry-After (from the queue's drain rate, 1..60 s) / "
                        f"gRPC RESOURCE_EXHAUSTED (default {DEFAULT_MAX_QUEUED})")
    p.add_argument("--no-prefix-cache", action="store_true", help="disable KV prefix caching in the MemPool")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    auth = p.add_argument_group("authentication (health and /metrics stay open)")
    auth.add_argument("--api-key", help="clients must send 'Authorization: Bearer KEY' (HTTP header or gRPC "
                      "metadata); default $EAAS_API_KEY, which keeps the key out of the process list")
    auth.add_argument("--api-key-file", metavar="FILE", help="read the API key from FILE (e.g. a mounted Secret); "
                      "re-read when the file changes, so a rotated Secret takes effect without a restart")
    add_tls_flags(p, cert_help="serve gRPC and HTTP over TLS with this certificate (PEM); it is also the client "
                  "certificate shown to expert servers", ca_help="CA (PEM) of the expert servers: connect to them "
                  "over mutual TLS, verifying their certificates against it")
    p.add_argument("--tls-client-ca-file", metavar="FILE", help="with --tls-cert-file: clients (gRPC and HTTPS) "
                   "must present a certificate signed by this CA (PEM); re-read when it changes")
    p.add_argument("--expert-tls-name", metavar="NAME", help="with --tls-ca-file: the name the expert servers' "
                   "certificates carry, when it is not the host of their address (e.g. pod IPs)")
    p.add_argument("--max-concurrent-streams", type=int, default=DEFAULT_MAX_STREAMS, metavar="N",
                   help="gRPC streams one client connection may have open at once (HTTP/2 "
                        f"SETTINGS_MAX_CONCURRENT_STREAMS); more wait in the client (default {DEFAULT_MAX_STREAMS})")
    p.add_argument("--stall-timeout", type=float, default=DEFAULT_STALL_TIMEOUT_S, metavar="SECONDS",
                   help="a client that reads none of its stream's output for this long has its request aborted "
                        f"and its KV freed (default {DEFAULT_STALL_TIMEOUT_S:g})")


def run(args) -> int:
    check_micro_batch_arguments(args)
    from eaas.gateway.server import Gateway, GatewayOptions

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if args.watch_endpoints and not args.topology:
        raise UserError("--watch-endpoints needs --topology (which Services hold which experts)")
    if not (args.expert_servers or args.topology or args.redis):
        raise UserError("tell the gateway where the experts are: --expert-servers, --topology or --redis")
    if args.max_concurrent_streams < 1:
        raise UserError(f"--max-concurrent-streams must be >= 1, got {args.max_concurrent_streams}")
    if not args.stall_timeout > 0:
        raise UserError(f"--stall-timeout must be > 0, got {args.stall_timeout}")
    tls = tls_files_from_args(args)
    if tls is not None and tls.has_ca and not tls.has_identity:
        raise UserError("--tls-ca-file: expert servers need our client certificate too: "
                        "give --tls-cert-file and --tls-key-file")
    client_tls = None
    if args.tls_client_ca_file:
        if tls is None or not tls.has_identity:
            raise UserError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file (the gateway's certificate)")
        client_tls = TLSFiles(args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file)
    opts = GatewayOptions(model=args.model, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                          expert_servers=args.expert_servers, topology=args.topology, redis=args.redis,
                          deployment=args.deployment, dtype=args.dtype, max_num_seqs=args.max_num_seqs,
                          max_batched_tokens=args.max_batched_tokens, micro_batches=args.micro_batches,
                          micro_batch_min_tokens=args.micro_batch_min_tokens,
                          prefix_cache=not args.no_prefix_cache, watch_endpoints=args.watch_endpoints,
                          namespace=args.namespace, kv_cache_bytes=args.kv_cache_bytes,
                          max_queued_requests=args.max_queued_requests, transport=args.transport,
                          api_key=api_key_source(args.api_key, args.api_key_file), tls=tls, client_tls=client_tls,
                          expert_tls_name=args.expert_tls_name, max_concurrent_streams=args.max_concurrent_streams,
                          stall_timeout_s=args.stall_timeout)
    if opts.expert_servers:
        from eaas.gateway.discovery import parse_expert_servers

        parse_expert_servers(opts.expert_servers)  # a bad spec fails now, with one line
    asyncio.run(Gateway(opts).serve())  # UserError: one line (eaas/cli.py); anything else: a traceback, exit 1
    return 0
