"""`eaas operator`: run the MoEDeployment operator (kopf) against the current kubeconfig or in-cluster."""

from __future__ import annotations

import argparse

from eaas.cli import UserError

from .spec import DEFAULT_REDIS_IMAGE


def configure(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; kopf globs like 'team-*' work)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--standalone", action="store_true",
                        help="no kopf peering: this is the only operator instance (what the chart runs)")
    parser.add_argument("--redis-url", default=None,
                        help="read load statistics and delete keys in this Redis for every MoEDeployment, "
                             "instead of each one's memPool (for operators running outside the cluster)")
    parser.add_argument("--redis-image", default=DEFAULT_REDIS_IMAGE,
                        help="image of the managed Redis for MoEDeployments that name none in memPool.redisImage "
                             f"(default {DEFAULT_REDIS_IMAGE})")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="serve kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def run(args: argparse.Namespace) -> int:
    if not args.namespace and not args.all_namespaces:
        raise UserError("choose what to watch: --namespace NS (repeatable) or --all-namespaces")
    import kopf

    from . import handlers  # noqa: F401  (registers the handlers with kopf's default registry)

    kopf.configure(verbose=args.verbose)  # installs kopf's log format and level
    kopf.run(
        standalone=args.standalone,
        namespaces=args.namespace,
        clusterwide=args.all_namespaces,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(redis_url_override=args.redis_url, default_redis_image=args.redis_image),
    )
    return 0
