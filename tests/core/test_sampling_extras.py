"""The engine's logprobs, prompt logprobs and penalties against transformers: chunked prefill, a prompt whose
prefix another request left in the cache, and the logits processors transformers ships."""

from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from eaas.engine.factory import monolithic_engine
from eaas.engine.logprobs import prompt_rows
from eaas.engine.sampler import apply_penalties
from eaas.engine.scheduler import ScheduleLimits
from eaas.engine.sequence import SamplingParams

PROMPT = list(range(10, 47))  # 37 tokens: two full blocks of 16 and 5 more


@pytest.fixture(scope="module")
def hf(mixtral_dir):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(mixtral_dir).eval()


def run(engine, prompt, params):
    seq = engine.add_request(prompt, params).seq
    outputs = []
    while engine.has_unfinished():
        outputs += [o for o in engine.step() if o.seq is seq]
    return seq, outputs


def test_prompt_and_output_logprobs_equal_transformers_with_chunks_and_a_cached_prefix(mixtral_dir, hf):
    engine = monolithic_engine(mixtral_dir, limits=ScheduleLimits(max_batched_tokens=8))
    run(engine, PROMPT, SamplingParams(max_tokens=2))  # leaves the prompt's two full blocks in the prefix cache
    seq, outputs = run(engine, PROMPT, SamplingParams(max_tokens=4, ignore_eos=True, logprobs=3, prompt_logprobs=2))

    ids = PROMPT + seq.output_ids
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    prompt_lp = outputs[0].prompt_logprobs
    assert prompt_lp[0] is None and len(prompt_lp) == len(PROMPT)
    assert [e.token_id for e in prompt_lp[1:]] == PROMPT[1:]
    assert max(abs(e.logprob - ref[p - 1, PROMPT[p]].item()) for p, e in enumerate(prompt_lp) if p) < 1e-4
    assert all([t for t, _ in e.top] == ref[p - 1].topk(2).indices.tolist() for p, e in enumerate(prompt_lp) if p)
    assert outputs[1].prompt_logprobs is None  # sent once
    for i, out in enumerate(outputs):
        row = ref[len(PROMPT) - 1 + i]
        assert abs(out.logprobs.logprob - row[out.token_id].item()) < 1e-4
        assert [t for t, _ in out.logprobs.top] == row.topk(3).indices.tolist()


@pytest.mark.parametrize("cached,new,recorded,expected", [
    (0, 8, 1, range(0, 8)),     # first chunk of a 37-token prompt: positions 0..7 score tokens 1..8
    (32, 5, 33, range(0, 4)),   # last chunk: position 36 predicts the first output, not a prompt token
    (0, 37, 20, range(19, 36)), # recomputed after preemption: the first 19 entries are kept
    (37, 1, 37, range(0, 0)),   # a decode step
])
def test_prompt_rows_score_each_prompt_token_once(cached, new, recorded, expected):
    assert prompt_rows(cached, new, 37, recorded) == expected


def test_repetition_penalty_equals_transformers_and_presence_frequency_follow_openai():
    torch.manual_seed(0)
    logits = torch.randn(50) * 3
    prompt, output = [1, 2, 3, 3], [3, 7, 7, 7, 9]
    ours = apply_penalties(logits, prompt, output, repetition=1.7, frequency=0.0, presence=0.0)
    ref = RepetitionPenaltyLogitsProcessor(1.7)(torch.tensor([prompt + output]), logits[None].clone())[0]
    assert torch.equal(ours, ref)
    ours = apply_penalties(logits, prompt, output, repetition=1.0, frequency=0.5, presence=0.25)
    counts = torch.zeros(50)
    for t in output:
        counts[t] += 1
    assert torch.allclose(ours, logits - 0.5 * counts - 0.25 * (counts > 0).float())
    assert ours[1] == logits[1]  # presence/frequency count the output only
