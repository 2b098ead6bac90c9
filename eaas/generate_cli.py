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


def parse_prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise UserError("--prompt-ids is empty")
    return ids


def _generate_local(args) -> dict:
    from eaas.engine.factory import load_tokenizer, monolithic_engine
    from eaas.engine.llm_engine import RequestError
    from eaas.engine.sequence import SamplingParams

    from eaas.model.checkpoint import resolve_model_uri

    args.model = str(resolve_model_uri(args.model))  # hf://org/name -> its local snapshot
    tokenizer = load_tokenizer(args.model)
    if args.prompt is not None:
        if tokenizer is None:
            raise UserError(f"{args.model} has no tokenizer; pass --prompt-ids instead of --prompt")
        prompt_ids = tokenizer(args.prompt)["input_ids"]
    else:
        prompt_ids = parse_prompt_ids(args.prompt_ids)
    engine = monolithic_engine(args.model, args.dtype)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed, ignore_eos=args.ignore_eos)
    try:
        seq = engine.add_request(prompt_ids, params).seq
    except RequestError as exc:
        raise UserError(str(exc)) from None
    start = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            if not args.json and tokenizer is not None:
                print(tokenizer.decode([out.token_id]), end="", flush=True)
    elapsed = time.perf_counter() - start
    if not args.json and tokenizer is not None:
        print()
    text = tokenizer.decode(seq.output_ids) if tokenizer is not None else None
    return {"token_ids": seq.output_ids, "text": text, "finish_reason": seq.finish_reason,
            "prompt_tokens": len(prompt_ids), "completion_tokens": len(seq.output_ids),
            "elapsed_s": round(elapsed, 4)}


def _generate_remote(args) -> dict:
    from eaas.client import GenerationError, SyncClient

    kwargs = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                  ignore_eos=args.ignore_eos)
    if args.prompt is not None:
        kwargs["prompt"] = args.prompt
    else:
        kwargs["prompt_ids"] = parse_prompt_ids(args.prompt_ids)
    start = time.perf_counter()
    try:
        with SyncClient([args.gateway], timeout=args.timeout, api_key=args.api_key, tls_ca_file=args.tls_ca_file,
                        tls_cert_file=args.tls_cert_file, tls_key_file=args.tls_key_file,
                        tls_server_name=args.tls_server_name) as client:
            ids, text, reason = [], [], None
            for chunk in client.generate_stream(**kwargs):
                ids.extend(chunk.token_ids)
                text.append(chunk.text or "")
                reason = chunk.finish_reason or reason
                if not args.json and chunk.text:
                    print(chunk.text, end="", flush=True)
    except GenerationError as exc:
        raise UserError(str(exc)) from None
    if not args.json and any(text):
        print()
    return {"token_ids": ids, "text": "".join(text) if any(text) else None, "finish_reason": reason,
            "completion_tokens": len(ids), "elapsed_s": round(time.perf_counter() - start, 4)}


def run(args) -> int:
    if args.max_tokens < 1:
        raise UserError("--max-tokens must be >= 1")
    result = _generate_local(args) if args.model else _generate_remote(args)
    if args.json:
        print(json.dumps(result))
    elif result["text"] is None:
        print(" ".join(str(t) for t in result["token_ids"]))
    print(f"[{result['completion_tokens']} tokens, finish_reason={result['finish_reason']}, "
          f"{result['elapsed_s']} s]", file=sys.stderr)
    return 0
