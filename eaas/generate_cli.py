"""`eaas generate`: one completion, in-process (--model) or through a running gateway (--gateway)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from eaas.errors import UserError


def configure(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", metavar="DIR", help="HF checkpoint directory; runs the engine in this process")
    where.add_argument("--gateway", metavar="HOST:PORT", help="a running gateway's gRPC address (see `eaas up`)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-ids", metavar="IDS", help="comma-separated prompt token ids, e.g. 1,17,42")
    prompt.add_argument("--prompt", metavar="TEXT", help="prompt text (needs a tokenizer in the model directory)")
    p.add_argument("--max-tokens", type=int, default=16, help="tokens to generate at most (default 16)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same tokens)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    p.add_argument("--stop", metavar="TEXT", action="append", default=None,
                   help="end the text before this string, finish_reason stop (repeatable; needs a tokenizer; "
                   "default: none)")
    p.add_argument("--stop-token-ids", metavar="IDS", default=None,
                   help="comma-separated token ids that end generation, like EOS (default: none)")
    p.add_argument("--min-tokens", metavar="N", type=int, default=0,
                   help="tokens to generate before EOS, --stop-token-ids or --stop may end it (default 0)")
    p.add_argument("--presence-penalty", metavar="X", type=float, default=0.0,
                   help="in [-2, 2]: subtracted from each token already in the output (default 0.0 = off)")
    p.add_argument("--frequency-penalty", metavar="X", type=float, default=0.0,
                   help="in [-2, 2]: subtracted once per occurrence in the output (default 0.0 = off)")
    p.add_argument("--repetition-penalty", metavar="X", type=float, default=1.0,
                   help="> 0: tokens in prompt + output become less likely above 1, more below (default 1.0 = off)")
    p.add_argument("--logprobs", metavar="N", type=int, default=None,
                   help="with --json: each token's logprob and the N (0..20) most likely alternatives "
                   "(default: none)")
    p.add_argument("--dtype", default="float32", help="weights dtype with --model: float32|bfloat16|float16")
    p.add_argument("--json", action="store_true", help="print one JSON object: token_ids, text, finish_reason, ...")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a gateway (default 120)")
    p.add_argument("--api-key", help="with --gateway: the gateway's API key (default $EAAS_API_KEY)")
    p.add_argument("--tls-ca-file", metavar="FILE", help="with --gateway: connect over TLS and verify the gateway "
                   "against this CA (PEM; `eaas up --tls` prints its path)")
    p.add_argument("--tls-cert-file", metavar="FILE", help="with --gateway: a client certificate to present (PEM)")
    p.add_argument("--tls-key-file", metavar="FILE", help="the private key of --tls-cert-file (PEM)")
    p.add_argument("--tls-server-name", metavar="NAME", help="with --tls-ca-file: the name the gateway's certificate "
                   "must carry, when it is not the host of --gateway (e.g. a Service's ClusterIP)")


def parse_ids(text: str, flag: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise UserError(f"{flag} is empty")
    bad = [t for t in ids if not 0 <= t < 2**31]  # the gRPC message carries int32 ids
    if bad:
        raise UserError(f"{flag}: {bad[0]} is not a token id")
    return ids


def request_fields(args) -> dict:
    """The request's sampling fields, named as the SDK's generate and SamplingParams both name them, so that
    the two paths are given the same request."""
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                ignore_eos=args.ignore_eos,
                stop_token_ids=tuple(parse_ids(args.stop_token_ids, "--stop-token-ids")
                                     if args.stop_token_ids is not None else ()),
                min_tokens=args.min_tokens, presence_penalty=args.presence_penalty,
                frequency_penalty=args.frequency_penalty, repetition_penalty=args.repetition_penalty,
                logprobs=args.logprobs)


def checked_params(request: dict):
    """SamplingParams of the request, checked by the engine's own rules (what a gateway would refuse, refused
    here before any model loads or gateway is dialled; negative counts would not even fit the gRPC message)."""
    from eaas.engine.sampling_params import InvalidParam, SamplingParams

    params = SamplingParams(**request)
    try:
        params.validate()
    except InvalidParam as exc:
        raise UserError(flag_message(str(exc), exc.param)) from None
    return params


def flag_message(message: str, param: str) -> str:
    """An engine message about fields ("min_tokens must be in [0, max_tokens=8]") worded for their flags
    ("--min-tokens must be in [0, --max-tokens=8]")."""
    import re

    flags = {name: "--" + name.replace("_", "-") for name in (param, *FLAG_FIELDS)}
    return re.sub(r"\b(" + "|".join(map(re.escape, flags)) + r")\b", lambda m: flags[m.group(1)], message)


# SamplingParams fields that eaas generate takes as flags of the same name
FLAG_FIELDS = ("max_tokens", "temperature", "top_p", "seed", "min_tokens", "presence_penalty", "frequency_penalty",
               "repetition_penalty", "logprobs")


def _generate_remote(args, prompt_ids: list[int] | None, request: dict) -> dict:
    """Through a gateway, which checks the fields by the engine's rules (INVALID_ARGUMENT: one line)."""
    from eaas.client import GenerationError, SyncClient

    kwargs = dict(request, stop=args.stop)
    if prompt_ids is None:
        kwargs["prompt"] = args.prompt
    else:
        kwargs["prompt_ids"] = prompt_ids
    start = time.perf_counter()
    try:
        with SyncClient([args.gateway], timeout=args.timeout, api_key=args.api_key, tls_ca_file=args.tls_ca_file,
                        tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                        tls_server_name=args.tls_server_name) as client:
            ids, text, logprobs, reason = [], [], [], None
            for chunk in client.generate_stream(**kwargs):
                ids.extend(chunk.token_ids)
                text.append(chunk.text or "")
                logprobs.extend(chunk.logprobs)
                reason = chunk.finish_reason or reason
                if not args.json and chunk.text:
                    print(chunk.text, end="", flush=True)
    except GenerationError as exc:
        raise UserError(str(exc)) from None
    if not args.json and any(text):
        print()
    result = {"token_ids": ids, "text": "".join(text) if any(text) else None, "finish_reason": reason,
              "completion_tokens": len(ids), "elapsed_s": round(time.perf_counter() - start, 4)}
    if args.logprobs is not None:
        from eaas.generate_local import logprobs_json

        result["logprobs"] = [logprobs_json(e) for e in logprobs]
    return result


def run(args) -> int:
    prompt_ids = parse_ids(args.prompt_ids, "--prompt-ids") if args.prompt is None else None
    request = request_fields(args)
    params = checked_params(request)
    if args.model:
        from eaas.generate_local import generate_local

        result = generate_local(args, prompt_ids, params, echo=not args.json)
    else:
        result = _generate_remote(args, prompt_ids, request)
    if args.json:
        print(json.dumps(result))
    elif result["text"] is None:
        print(" ".join(str(t) for t in result["token_ids"]))
    print(f"[{result['completion_tokens']} tokens, finish_reason={result['finish_reason']}, "
          f"{result['elapsed_s']} s]", file=sys.stderr)
    return 0
