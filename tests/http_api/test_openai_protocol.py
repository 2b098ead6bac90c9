"""The OpenAI wire rules as pure functions: request validation, stop strings, chat prompts."""

from __future__ import annotations

import pytest

from eaas.engine.llm_engine import RequestError
from eaas.engine.sequence import SamplingParams
from eaas.gateway.openai_http import chat_prompt_ids
from eaas.gateway.openai_protocol import (
    InvalidRequest,
    StopStringCutter,
    parse_chat_request,
    parse_completion_request,
)
from eaas.model.tiny import byte_level_tokenizer


def test_completion_defaults_follow_openai():
    req = parse_completion_request({"model": "m", "prompt": "hi"})
    assert req.params == SamplingParams(max_tokens=16, temperature=1.0, top_p=1.0)
    assert (req.model, req.prompt, req.stop, req.stream, req.include_usage) == ("m", "hi", (), False, False)
    assert req.sampling_params(prompt_len=2, context_len=2048).max_tokens == 16


def test_completion_fields_map_onto_sampling_params():
    req = parse_completion_request({"prompt": [5, 6], "max_tokens": 7, "temperature": 0, "top_p": 0.5, "seed": 3,
                                    "stop": "\n", "ignore_eos": True, "stop_token_ids": [9], "stream": True,
                                    "stream_options": {"include_usage": True}, "user": "ignored"})
    assert req.params == SamplingParams(max_tokens=7, temperature=0.0, top_p=0.5, seed=3, stop_token_ids=(9,),
                                        ignore_eos=True)
    assert (req.prompt, req.stop, req.stream, req.include_usage) == ([5, 6], ("\n",), True, True)


@pytest.mark.parametrize("prompt,expected", [("a", "a"), (["a"], "a"), ([1, 2], [1, 2]), ([[1, 2]], [1, 2])])
def test_one_prompt_is_unwrapped_from_a_list(prompt, expected):
    assert parse_completion_request({"prompt": prompt}).prompt == expected


@pytest.mark.parametrize("body,param", [
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [[1], [2]]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [True, 2]}, "prompt"),
    ({"prompt": [["a"]]}, "prompt"),
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "max_tokens": 2.0}, "max_tokens"),
    ({"prompt": "a", "temperature": -1}, "temperature"),
    ({"prompt": "a", "temperature": float("nan")}, "temperature"),
    ({"prompt": "a", "top_p": 0.0}, "top_p"),
    ({"prompt": "a", "top_p": True}, "top_p"),
    ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "seed": 2**64}, "seed"),
    ({"prompt": "a", "stop": ["ok", 3]}, "stop"),
    ({"prompt": "a", "stop_token_ids": [-2]}, "stop_token_ids"),
    ({"prompt": "a", "ignore_eos": 1}, "ignore_eos"),
    ({"prompt": "a", "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({"prompt": "a", "model": 3}, "model"),
    ({"prompt": "a", "echo": "yes"}, "echo"),
    ({"prompt": "a", "logprobs": True}, "logprobs"),
    ({"prompt": "a", "best_of": 3}, "best_of"),
    ({"prompt": "a", "n": 2, "best_of": 1}, "best_of"),
    ({"prompt": "a", "n": 129}, "n"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "presence_penalty": "0.5"}, "presence_penalty"),
    ({"prompt": "a", "min_tokens": -1}, "min_tokens"),
    ({"prompt": "a", "suffix": "z"}, "suffix"),
])
def test_bad_completion_field_names_its_param(body, param):
    with pytest.raises(InvalidRequest) as info:
        parse_completion_request(body)
    assert info.value.param == param


@pytest.mark.parametrize("body,param", [
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -2.1}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_tokens": 9, "max_tokens": 8}, "min_tokens"),
    ({"logprobs": 21}, "logprobs"),
])
def test_values_out_of_range_name_their_param(body, param):
    req = parse_completion_request({"prompt": "a", **body})
    with pytest.raises(InvalidRequest) as info:
        req.sampling_params(prompt_len=1, context_len=2048)
    assert info.value.param == param


@pytest.mark.parametrize("body,param", [
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": 3}, "logprobs"),
    ({"echo": True}, "echo"),
])
def test_bad_chat_logprobs_name_their_param(body, param):
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request({"messages": [{"role": "user", "content": "hi"}], **body})
    assert info.value.param == param


def test_new_fields_map_onto_sampling_params_and_choices():
    req = parse_completion_request({"prompt": "a", "n": 3, "best_of": 3, "echo": True, "logprobs": 2, "seed": 7,
                                    "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.2,
                                    "min_tokens": 4})
    params = req.sampling_params(prompt_len=1, context_len=2048)
    assert params == SamplingParams(max_tokens=16, temperature=1.0, seed=7, presence_penalty=0.5,
                                    frequency_penalty=-0.5, repetition_penalty=1.2, min_tokens=4, logprobs=2,
                                    prompt_logprobs=2)
    assert [(p.seed, p.prompt_logprobs) for p in req.choice_params(params)] == [(7, 2), (8, None), (9, None)]
    chat = parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 5})
    assert (chat.params.logprobs, chat.params.prompt_logprobs) == (5, None)


def test_stop_strings_wait_for_min_tokens():
    cutter = StopStringCutter(("a",))
    assert cutter.next_piece("xa", None, armed=False) == ("xa", None)
    assert cutter.next_piece("ya", None) == ("y", "stop")


def test_off_values_of_unsupported_fields_are_accepted():
    req = parse_completion_request({"prompt": "a", "n": 1, "echo": False, "logprobs": None, "presence_penalty": 0.0,
                                    "frequency_penalty": 0, "logit_bias": {}, "best_of": 1})
    assert req.prompt == "a"


def test_body_that_is_not_an_object_is_refused():
    with pytest.raises(InvalidRequest, match="JSON object"):
        parse_completion_request([1, 2])


def test_chat_without_max_tokens_may_fill_the_rest_of_the_context():
    req = parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "temperature": 0})
    assert req.sampling_params(prompt_len=48, context_len=2048).max_tokens == 2000
    limited = parse_chat_request({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5})
    assert limited.sampling_params(prompt_len=48, context_len=2048).max_tokens == 5


def test_chat_text_parts_are_joined_and_extra_message_fields_dropped():
    req = parse_chat_request({"messages": [{"role": "user", "name": "ann", "content": [
        {"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]})
    assert req.messages == [{"role": "user", "content": "one\ntwo"}]


@pytest.mark.parametrize("messages", [None, [], "hi", [{"content": "hi"}], [{"role": "user", "content": None}],
                                      [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]])
def test_bad_messages_are_refused(messages):
    with pytest.raises(InvalidRequest) as info:
        parse_chat_request({"messages": messages})
    assert info.value.param == "messages"


def test_stop_cutter_holds_back_a_possible_stop_start_and_cuts_at_the_stop():
    cutter = StopStringCutter(("END", "\n\n"))
    assert cutter.next_piece("abcE", None) == ("abc", None)     # "E" may start "END"
    assert cutter.next_piece("Nx", None) == ("ENx", None)       # it did not
    assert cutter.next_piece("y\n", None) == ("y", None)
    assert cutter.next_piece("\nlater", None) == ("", "stop")   # "\n\n" across two pieces


def test_stop_cutter_cuts_at_the_earliest_of_several_stops():
    assert StopStringCutter(("c", "ab")).next_piece("xabc", None) == ("x", "stop")


def test_stop_cutter_flushes_the_held_tail_when_generation_ends():
    cutter = StopStringCutter(("END",))
    assert cutter.next_piece("xEN", None) == ("x", None)
    assert cutter.next_piece("", "length") == ("EN", "length")


def test_without_stops_text_passes_through():
    cutter = StopStringCutter(())
    assert [cutter.next_piece(t, r) for t, r in [("a", None), ("b", "stop")]] == [("a", None), ("b", "stop")]


def test_chat_prompt_is_the_chat_template_rendering():
    tok = byte_level_tokenizer()
    ids = chat_prompt_ids(tok, [{"role": "user", "content": "hi"}])
    assert tok.decode(ids) == "<|user|>hi\n<|assistant|>"


def test_chat_prompt_needs_a_chat_template():
    tok = byte_level_tokenizer()
    tok.chat_template = None
    with pytest.raises(RequestError, match="no chat template"):
        chat_prompt_ids(tok, [{"role": "user", "content": "hi"}])
    with pytest.raises(RequestError, match="no tokenizer"):
        chat_prompt_ids(None, [{"role": "user", "content": "hi"}])
