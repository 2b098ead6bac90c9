"""`eaas top`: a refreshing terminal view of a running deployment, from its gateways' /metrics and/or the
Redis load windows and replica registry (docs/metrics.md). The frame is render_frame(top_view(...)), pure;
this module only reads, sleeps and prints.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from eaas.errors import UserError
from eaas.top.render import render_frame
from eaas.top.snapshot import Snapshot
from eaas.top.view import RedisFacts, top_view

CLEAR = "\x1b[H\x1b[2J"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gateway-http", metavar="URL", action="append", default=[],
                   help="a gateway's HTTP address (http://127.0.0.1:8000; /metrics is read). Repeat for several "
                        "gateways: their figures add up (replicas: the most any of them sees). In a cluster: "
                        "kubectl port-forward svc/<name>-gateway 8000")
    p.add_argument("--redis", metavar="URL", help="the deployment's Redis: per-expert load windows and the "
                   "replica registry (whole deployment, every gateway)")
    p.add_argument("--deployment", default="local", help="deployment name in Redis (`eaas up` uses 'local')")
    p.add_argument("--windows", type=int, default=6, help="complete 10 s Redis load windows to average (default 6)")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between frames (default 2)")
    p.add_argument("--once", action="store_true",
                   help="print one frame and exit: two readings --interval apart, so it has rates")
    p.add_argument("--api-key", help="Bearer key, only if something in front of the gateway guards /metrics "
                   "(the gateway itself serves /metrics open)")
    p.add_argument("--width", type=int, default=0, help="frame width (default: the terminal's)")
    p.add_argument("--max-experts", type=int, default=0, metavar="N",
                   help="show only the N busiest experts' bars (default: every expert, in id order)")


class Reader:
    def __init__(self, args):
        self.gateways = args.gateway_http
        self.api_key = args.api_key
        self.deployment = args.deployment
        self.windows = args.windows
        self.redis = None
        if args.redis:
            from eaas.operator.load import redis_client

            self.redis = redis_client(args.redis)
        self.source = " + ".join([*self.gateways, *([f"{args.redis} ({args.deployment})"] if args.redis else [])])

    def gateways_now(self) -> Snapshot | None:
        from eaas.top.sources import read_gateways

        return read_gateways(self.gateways, self.api_key) if self.gateways else None

    def redis_now(self) -> RedisFacts | None:
        if self.redis is None:
            return None
        import redis

        from eaas.top.sources import read_redis

        try:
            return read_redis(self.redis, self.deployment, self.windows)
        except redis.RedisError as exc:
            raise UserError(f"cannot read Redis: {exc}") from None


def _clock() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def run(args) -> int:
    if not args.gateway_http and not args.redis:
        raise UserError("give --gateway-http URL (repeatable) and/or --redis URL --deployment NAME")
    if args.interval <= 0 or args.windows < 1:
        raise UserError("--interval must be > 0 and --windows >= 1")
    reader = Reader(args)
    width = args.width or shutil.get_terminal_size((100, 40)).columns
    if args.once:
        first = reader.gateways_now()
        time.sleep(args.interval if first is not None else 0)
        view = top_view(first, reader.gateways_now(), reader.source, reader.redis_now())
        sys.stdout.write(render_frame(view, _clock(), width, args.max_experts))
        return 0
    previous = None
    clear = CLEAR if sys.stdout.isatty() else "\n"
    while True:
        try:
            current = reader.gateways_now()
            frame = render_frame(top_view(previous, current, reader.source, reader.redis_now()), _clock(), width,
                                 args.max_experts)
            previous = current
        except UserError as exc:  # a gateway restarting: say so and keep watching
            frame = f"eaas top · {reader.source} · {_clock()}\n{exc}; retrying every {args.interval:g} s\n"
            previous = None
        sys.stdout.write(clear + frame)
        sys.stdout.flush()
        time.sleep(args.interval)
