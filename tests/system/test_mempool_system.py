"""The MemPool under `eaas up`: a gateway dies mid-stream and another resumes from the pool's KV
blocks with identical tokens; Redis restarts under streaming load and no request fails."""

from __future__ import annotations

import threading
import time

import pytest
import redis
import torch
from concurrent_streams import metric, stream_all
from hf_checkpoints import write_hf_checkpoint



@pytest.mark.slow
@pytest.mark.redis
def test_gateway_sigkill_mid_stream_resumes_on_the_other_gateway_from_the_pool(tmp_path, up_fleet):
    hf = write_hf_checkpoint(tmp_path / "m", "qwen2_moe", seed=8)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1, gateways=2)
    second_http = fleet.http.rsplit(":", 1)[0] + ":" + str(int(fleet.http.rsplit(":", 1)[1]) + 1)
    prompts = [[(7 * i + 3 * j) % 250 + 1 for j in range(20 + 3 * i)] for i in range(4)]
    first = fleet.gateway_process(0)
    killed = {}

    def kill_gateway_0(tokens):
        if tokens >= 30 and not killed:  # every stream is past its first full KV blocks
            killed["pid"] = first.pid
            first.kill()

    results, errors = stream_all(fleet.gateways, prompts, 24, kill_gateway_0)
    assert killed and not errors, errors
    for i, p in enumerate(prompts):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False,
                          attention_mask=torch.ones(1, len(p), dtype=torch.long))[0, len(p):].tolist()
        assert results[i] == ref, f"prompt {i}"
    assert metric(second_http, "eaas_mempool_hits_total") >= 1
    assert metric(second_http, "eaas_gateway_prefill_tokens_reused_total") >= 16


NEW_TOKENS = 1000  # quiet machine: 10 x 1000 tokens stream ~9.5 s; the restart takes ~1.1 s (120 tokens with EOS ended first)


@pytest.mark.slow
@pytest.mark.redis
def test_redis_restart_while_streaming_fails_no_request(tmp_path, up_fleet, redis_server):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=9)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1, extra=("--redis", redis_server.url))
    prompts = [[(5 * i + j) % 250 + 1 for j in range(18)] for i in range(10)]
    # every stream runs its full length (no EOS), long enough to outlast the restart on a fast quiet machine
    baseline, errors = stream_all(fleet.gateways, prompts, NEW_TOKENS, ignore_eos=True)
    assert not errors, errors
    events: dict[str, float] = {}
    restarter = threading.Thread(target=lambda: (redis_server.restart(down_seconds=1.0),
                                                 events.setdefault("redis_back", time.monotonic())))

    def restart_redis(tokens):
        events["last_token"] = time.monotonic()
        if tokens >= 40 and "restart" not in events:
            events["restart"] = time.monotonic()
            restarter.start()

    results, errors = stream_all(fleet.gateways, prompts, NEW_TOKENS, restart_redis, ignore_eos=True)
    print(f"streamed {events['last_token'] - events['restart']:.2f} s after the restart began, "
          f"{events['last_token'] - events.get('redis_back', 0):.2f} s after Redis was back")
    restarter.join(30)
    assert "redis_back" in events, "redis-server did not come back"
    assert events["last_token"] > events["redis_back"], "the streams ended before Redis was back"
    assert not errors, errors
    assert results == baseline
    # the gateway's per-expert load windows reached Redis (flushed at the latest on SIGTERM), across the restart
    assert fleet.stop() == 0
    client = redis.Redis.from_url(redis_server.url)
    routed = {int(e): int(n) for key in client.scan_iter("eaas:local:load:*") for e, n in client.hgetall(key).items()}
    assert set(routed) <= set(range(8)) and sum(routed.values()) > 0
