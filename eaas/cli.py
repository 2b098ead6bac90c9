"""The `eaas` command: one entry point, one module per subcommand, imported only when chosen.

Each subcommand module exposes `configure(parser)` (adds its flags) and `run(args) -> int`.
Errors the user can fix (bad flags, bad model dir, bad ids) are raised as `UserError` and printed
as one line on stderr with exit code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from eaas.openmp import quiet_idle_workers

quiet_idle_workers()  # before any subcommand imports torch

from eaas.errors import UserError  # noqa: E402

# name -> (module, one-line help). Modules are imported lazily so `eaas --help` stays fast.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("eaas.generate_cli", "generate tokens in-process from a model directory, or through a gateway"),
    "tiny-model": ("eaas.model.tiny", "write a small random MoE checkpoint (HF layout + byte-level tokenizer)"),
    "up": ("eaas.up", "run the whole system on this machine: expert servers as processes + a gateway"),
    "gateway": ("eaas.gateway.cli", "serve the dense model (gRPC Generate + OpenAI HTTP) using remote experts"),
    "expert-server": ("eaas.expert_service.cli", "serve one group of experts over gRPC"),
    "operator": ("eaas.operator.cli", "run the Kubernetes operator for MoEDeployment resources (kopf)"),
    "plan": ("eaas.plan.cli", "capacity planner: replay a trace under static/reactive/predictive scaling (simulated)"),
    "routing-stats": ("eaas.plan.routing_stats", "export a deployment's per-expert load windows from Redis as JSON"),
    "top": ("eaas.top.cli", "a refreshing terminal view of a running deployment: tokens/s, per-expert load, replicas"),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eaas",
        description="Expert-as-a-Service: serve Mixture-of-Experts LLMs whose experts are independent, "
        "stateless gRPC services that fail, scale and move one at a time.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module_name).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen not in SUBCOMMANDS:
        chosen = None
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        print(f"eaas {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
