"""`eaas routing-stats`: export a deployment's per-expert load windows from Redis as JSON for `eaas plan`.

Reads the windows gateways already write (`eaas:{deployment}:load:{bucket}`, docs/redis-schema.md): the
last N complete 10-second windows, oldest first; a window with no traffic is kept (empty) so time stays
regular. Output: {"deployment", "bucket_s", "windows": [{"start": unix_s, "tokens": {expert: n}}]}.
"""

from __future__ import annotations

import argparse
import json
import time

from eaas.errors import UserError
from eaas.mempool.keys import LOAD_BUCKET_S, LOAD_KEY_TTL_S, DeploymentKeys, complete_load_buckets


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--redis", metavar="URL", required=True, help="the deployment's Redis (redis://host:port)")
    p.add_argument("--deployment", required=True, help="MoEDeployment name (`eaas up` uses 'local')")
    p.add_argument("--windows", type=int, default=LOAD_KEY_TTL_S // LOAD_BUCKET_S,
                   help="complete 10 s windows to export (default 360: the hour Redis keeps)")


def routing_stats(client, deployment: str, now: float, windows: int) -> dict:
    """The export document for the last `windows` complete windows before `now`."""
    keys = DeploymentKeys(deployment)
    buckets = sorted(complete_load_buckets(now, windows))
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hgetall(keys.load(bucket))
    rows = [{"start": b, "tokens": {str(int(e)): int(n) for e, n in sorted(h.items(), key=lambda kv: int(kv[0]))}}
            for b, h in zip(buckets, pipe.execute())]
    return {"deployment": deployment, "bucket_s": LOAD_BUCKET_S, "windows": rows}


def run(args) -> int:
    import redis

    from eaas.operator.load import redis_client

    if args.windows < 1:
        raise UserError("--windows must be >= 1")
    try:
        doc = routing_stats(redis_client(args.redis), args.deployment, time.time(), args.windows)
    except redis.RedisError as exc:
        raise UserError(f"cannot read load windows from {args.redis}: {exc}") from None
    print(json.dumps(doc))
    return 0
