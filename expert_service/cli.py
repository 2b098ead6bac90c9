"""`eaas expert-server`: load one group's experts from a checkpoint and serve them over gRPC."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket

import torch

from eaas.errors import UserError
from eaas.expert_service.metrics import ExpertServerMetrics
from eaas.expert_service.server import ServerConfig, build_servicer, move_experts, serve
from eaas.logs import configure_logging, log_event
from eaas.model.checkpoint import Checkpoint, parse_dtype
from eaas.model.experts import load_expert_weights
from eaas.tls import add_tls_flags, tls_files_from_args
from eaas.topology import format_expert_ids, parse_expert_ids

log = logging.getLogger("eaas.expert_service")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="HF checkpoint directory")
    parser.add_argument("--experts", default=None, metavar="IDS", help="expert ids to hold, e.g. 0-3,8 (default: all)")
    parser.add_argument("--layers", default=None, metavar="IDS", help="MoE layers to serve (default: all MoE layers)")
    parser.add_argument("--host", default="0.0.0.0", help="gRPC listen address (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=50051, help="gRPC port (default 50051)")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="Prometheus /metrics port; 0 = off (default 9090)")
    parser.add_argument("--deployment", default="eaas", metavar="NAME", help="MoEDeployment name (reported in Info)")
    parser.add_argument("--group", default="g0", metavar="NAME", help="expert group name (reported in Info)")
    parser.add_argument("--redis", default=None, metavar="URL",
                        help="register in the expert registry at this Redis URL")
    parser.add_argument("--advertise", default=None, metavar="HOST:PORT",
                        help="address registered for gateways (default: this host's name and --port)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="compute dtype of weights and activations (default float32)")
    parser.add_argument("--max-inflight", type=int, default=32, metavar="N",
                        help="Combine requests admitted at once; more get RESOURCE_EXHAUSTED (default 32)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto = cuda when available, else cpu")
    parser.add_argument("--transport", default="auto", choices=["auto", "shm", "grpc"],
                        help="data paths offered: auto/shm = gRPC plus shared-memory slots for gateways on this host "
                             "(named in Info), grpc = gRPC only (default auto)")
    add_tls_flags(parser, cert_help="serve gRPC over mutual TLS with this certificate (PEM; needs --tls-key-file "
                  "and --tls-ca-file)", ca_help="CA (PEM) that must have signed every client's certificate: "
                  "clients without one are refused")


def _ids(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return parse_expert_ids(text)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def choose_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available (torch.cuda.is_available() is False)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _check_port(value: int, flag: str, allow_zero: bool) -> None:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise UserError(f"{flag} {value} is not a valid port")


def run(args: argparse.Namespace) -> int:
    configure_logging("expert-server")
    _check_port(args.port, "--port", allow_zero=True)
    _check_port(args.metrics_port, "--metrics-port", allow_zero=True)
    if args.max_inflight < 1:
        raise UserError(f"--max-inflight must be >= 1, got {args.max_inflight}")
    experts_wanted, layers_wanted = _ids(args.experts, "--experts"), _ids(args.layers, "--layers")
    tls = tls_files_from_args(args)
    if tls is not None and not (tls.has_identity and tls.has_ca):
        raise UserError("an expert server's TLS is mutual: give --tls-cert-file, --tls-key-file and --tls-ca-file")
    device = choose_device(args.device)
    ckpt = Checkpoint(args.model)
    experts = load_expert_weights(ckpt, experts_wanted, layers_wanted, parse_dtype(args.dtype))
    move_experts(experts, device)
    metrics = ExpertServerMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(args.metrics_port, addr=args.host)
        except OSError as exc:
            raise UserError(f"--metrics-port {args.metrics_port}: {exc}") from None
    config = ServerConfig(args.host, args.port, args.group, args.deployment, args.max_inflight,
                          ckpt.fingerprint(), ckpt.family.model_type, offer_shm=args.transport != "grpc",
                          tls=tls)
    servicer = build_servicer(experts, config, device, metrics)
    layers = sorted(experts.layers)
    expert_ids = experts.layers[layers[0]].expert_ids
    heartbeat = None

    async def on_ready(bound_port: int) -> None:
        nonlocal heartbeat
        advertise = args.advertise or f"{socket.gethostname()}:{bound_port}"
        registered = None
        if args.redis is not None:  # the registry is how gateways discover this replica
            from eaas.mempool.registry import Heartbeat, ReplicaInfo

            info = ReplicaInfo(address=advertise, group=args.group, layers=tuple(layers), experts=tuple(expert_ids),
                               fingerprint=config.model_fingerprint)
            heartbeat = Heartbeat.from_url(args.redis, info, deployment=args.deployment)
            registered = await heartbeat.start()
        log_event(log, "ready", advertise=advertise, experts=format_expert_ids(expert_ids),
                  fingerprint=config.model_fingerprint, metrics_port=args.metrics_port, registered=registered)

    async def on_drain() -> None:
        nonlocal heartbeat
        if heartbeat is not None:  # deregister first: gateways stop choosing this replica at once
            await heartbeat.stop()
            heartbeat = None

    try:
        asyncio.run(serve(servicer, config, on_ready, on_drain))
    except OSError as exc:
        raise UserError(f"--port: {exc}") from None
    return 0
