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
    parser.add_argument("--redis-password-key-file", default=None, metavar="FILE",
                        help="key from which each managed Redis's password is derived (the chart mounts one); "
                             "without it a random key per start: a restarted operator cannot read the load of "
                             "managed Redis instances it started before")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="serve kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _password_key(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            key = f.read().strip()
    except OSError as exc:
        raise UserError(f"cannot read --redis-password-key-file {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise UserError(f"--redis-password-key-file {path}: the key must have at least 16 bytes")
    return key


def run(args: argparse.Namespace) -> int:
    if not args.namespace and not args.all_namespaces:
        raise UserError("choose what to watch: --namespace NS (repeatable) or --all-namespaces")
    import kopf

    from .credentials import new_password_key
    from . import handlers  # noqa: F401  (registers the handlers with kopf's default registry)

    kopf.configure(verbose=args.verbose)  # installs kopf's log format and level
    kopf.run(
        standalone=args.standalone,
        namespaces=args.namespace,
        clusterwide=args.all_namespaces,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(redis_url_override=args.redis_url, default_redis_image=args.redis_image,
                       password_key=_password_key(args.redis_password_key_file) or new_password_key()),
    )
    return 0
