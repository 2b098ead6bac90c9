"""`eaas generate --model`: one completion from an engine in this process, its text cut as the gateway cuts it."""

from __future__ import annotations

import time

from eaas.errors import UserError


class CompletionText:
    """A completion's text as the gateway's Generate streams it: each token's text from the incremental
    detokenizer (engine_service.py), then stop strings, which apply only after min_tokens tokens (grpc_api.py)."""

    def __init__(self, tokenizer, stops: tuple[str, ...], min_tokens: int):
        from eaas.gateway.detokenizer import IncrementalDetokenizer
        from eaas.gateway.openai_protocol import StopStringCutter

        self.detokenizer = IncrementalDetokenizer(tokenizer)
        self.cutter = StopStringCutter(stops)
        self.min_tokens = min_tokens

    def next_piece(self, output_ids: list[int], finish_reason: str | None) -> tuple[str, str | None]:
        """(text to show, finish reason) once output_ids gained a token: "stop" where a stop string begins."""
        text = self.detokenizer.step(output_ids, final=finish_reason is not None)
        return self.cutter.next_piece(text, finish_reason, armed=len(output_ids) > self.min_tokens)


def checked_stops(stops: list[str] | None, tokenizer, model: str) -> tuple[str, ...]:
    from eaas.engine.llm_engine import RequestError
    from eaas.gateway.grpc_api import checked_stop_strings

    try:
        stops = checked_stop_strings(stops or ())
    except RequestError as exc:
        raise UserError(f"--stop: {exc}") from None
    if stops and tokenizer is None:
        raise UserError(f"{model} has no tokenizer, which --stop needs; end on token ids with --stop-token-ids")
    return stops


def logprobs_json(entry) -> dict:
    return {"token_id": entry.token_id, "logprob": entry.logprob, "top": [[t, lp] for t, lp in entry.top]}


def generate_local(args, prompt_ids: list[int] | None, params, echo: bool) -> dict:
    """Run the request (checked SamplingParams) to its end; echo: print the text as it comes."""
    from eaas.engine.factory import load_tokenizer, monolithic_engine
    from eaas.engine.llm_engine import RequestError
    from eaas.model.checkpoint import resolve_model_uri

    args.model = str(resolve_model_uri(args.model))  # hf://org/name -> its local snapshot
    tokenizer = load_tokenizer(args.model)
    stops = checked_stops(args.stop, tokenizer, args.model)
    if prompt_ids is None:
        if tokenizer is None:
            raise UserError(f"{args.model} has no tokenizer; pass --prompt-ids instead of --prompt")
        prompt_ids = tokenizer(args.prompt)["input_ids"]
    engine = monolithic_engine(args.model, args.dtype)
    try:
        handle = engine.add_request(prompt_ids, params)
    except RequestError as exc:
        raise UserError(str(exc)) from None
    seq = handle.seq
    cut = CompletionText(tokenizer, stops, params.min_tokens)
    pieces, logprobs, finish_reason = [], [], None
    start = time.perf_counter()
    while engine.has_unfinished():
        for out in engine.step():
            if finish_reason is not None:
                continue  # a stop string ended it: nothing after it counts (none is made: see finish())
            piece, finish_reason = cut.next_piece(seq.output_ids, seq.finish_reason)
            pieces.append(piece)
            if out.logprobs is not None:
                logprobs.append(logprobs_json(out.logprobs))
            if echo and piece:
                print(piece, end="", flush=True)
            if finish_reason is not None and not seq.is_finished:
                handle.finish()  # a stop string: the engine ends it at its next step
    elapsed = time.perf_counter() - start
    text = "".join(pieces) or None  # None, as through a gateway: no tokenizer, or nothing to show
    if echo and text:
        print()
    result = {"token_ids": list(seq.output_ids), "text": text,
              "finish_reason": finish_reason, "prompt_tokens": len(prompt_ids),
              "completion_tokens": len(seq.output_ids), "elapsed_s": round(elapsed, 4)}
    if params.logprobs is not None:
        result["logprobs"] = logprobs
    return result
