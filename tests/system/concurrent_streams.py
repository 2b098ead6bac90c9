"""Many concurrent streams through the SDK, and reading a component's /metrics (system-test helpers)."""

from __future__ import annotations

import threading
import urllib.request

from eaas.client import SyncClient


def metric(url: str, name: str) -> float:
    """Sum of every sample of a metric family on a component's /metrics page."""
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def stream_all(gateways, prompts, max_tokens, on_token=None, timeout=240, ignore_eos=False):
    """Stream every prompt at once, one client thread each; on_token(total so far) after every token."""
    results, errors, lock, count = {}, [], threading.Lock(), {"n": 0}

    def run(i):
        try:
            with SyncClient(gateways, timeout=timeout) as client:
                ids = []
                for chunk in client.generate_stream(prompt_ids=prompts[i], max_tokens=max_tokens,
                                                      ignore_eos=ignore_eos):
                    ids.extend(chunk.token_ids)
                    with lock:
                        count["n"] += 1
                        if on_token:
                            on_token(count["n"])
                results[i] = ids
        except Exception as exc:  # collected; the test asserts there are none
            errors.append(repr(exc))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 60)
    return results, errors
