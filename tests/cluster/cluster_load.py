"""What the cluster tier sends: greedy requests whose tokens transformers.generate fixes in advance,
and a steady load that counts every failed or wrong request while a fault or a rollout happens."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from eaas.client import SyncClient

MAX_TOKENS = 16


class Reference:
    """transformers.generate on the same checkpoint the pods mount: the tokens every answer must equal."""

    def __init__(self, model_dir: Path):
        import torch
        import transformers

        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        self.prompts = [[(i * 29 + j * 7) % 250 + 3 for j in range(3 + i % 6)] for i in range(8)]
        self._cache: dict[tuple[int, ...], list[int]] = {}

    def expected(self, prompt: list[int], max_tokens: int = MAX_TOKENS) -> list[int]:
        key = (*prompt, -max_tokens)
        if key not in self._cache:
            with self.torch.no_grad():
                out = self.model.generate(self.torch.tensor([prompt]), max_new_tokens=max_tokens, do_sample=False,
                                          min_new_tokens=max_tokens,
                                          attention_mask=self.torch.ones(1, len(prompt), dtype=self.torch.long))
            self._cache[key] = out[0, len(prompt):].tolist()
        return self._cache[key]

    def first_token_from(self, address: str) -> list[int] | None:
        """The first streamed token of prompt 0, or None while the gateway cannot answer yet."""
        try:
            with SyncClient([address], timeout=30, retries=0) as client:
                for chunk in client.generate_stream(prompt_ids=self.prompts[0], max_tokens=1, ignore_eos=True):
                    if chunk.token_ids:
                        return list(chunk.token_ids)
        except Exception:
            return None
        return None


def gateway_address(cluster, namespace: str, name: str) -> str:
    """The gateway Service's ClusterIP:grpc port, as a client on a node reaches it."""
    svc = cluster.get("service", namespace, f"{name}-gateway")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    return f"{svc['spec']['clusterIP']}:{port}"


def gateway_http(cluster, namespace: str, name: str) -> str:
    svc = cluster.get("service", namespace, f"{name}-gateway")
    port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "http")
    return f"http://{svc['spec']['clusterIP']}:{port}"


class SteadyLoad:
    """`clients` threads, each with its own SDK client (so its own connection through the Service),
    sending greedy requests back to back until stopped. Every failure and every token that differs from
    the reference is recorded; a correct request is one that finished with exactly the expected tokens."""

    def __init__(self, address: str, reference: Reference, clients: int = 4, max_tokens: int = MAX_TOKENS):
        self.address, self.reference, self.max_tokens = address, reference, max_tokens
        self.ok = 0
        self.failures: list[str] = []
        self.in_flight_tokens = 0  # tokens streamed so far (progress: "mid-stream" means this moves)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for prompt in reference.prompts:
            reference.expected(prompt, max_tokens)  # computed before any thread needs it
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(300)

    def _run(self, index: int) -> None:
        prompts = self.reference.prompts
        # The SDK's default retries (4, 0.2 s apart and growing): a rollout must not need a patient client.
        with SyncClient([self.address], timeout=120) as client:
            n = index
            while not self._stop.is_set():
                prompt = prompts[n % len(prompts)]
                n += 1
                tokens: list[int] = []
                try:
                    for chunk in client.generate_stream(prompt_ids=prompt, max_tokens=self.max_tokens,
                                                        ignore_eos=True):
                        tokens.extend(chunk.token_ids)
                        with self._lock:
                            self.in_flight_tokens += len(chunk.token_ids)
                except Exception as error:  # recorded: the tests assert there are none
                    with self._lock:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {type(error).__name__}: {error}")
                    continue
                expected = self.reference.expected(prompt, self.max_tokens)
                with self._lock:
                    if tokens == expected:
                        self.ok += 1
                    else:
                        self.failures.append(f"wrong tokens for {prompt}: {tokens} != {expected}")

    def wait_for_requests(self, count: int, timeout: float = 300) -> None:
        """Until `count` more requests completed correctly (the load is really flowing)."""
        target = self.ok + count
        deadline = time.monotonic() + timeout
        while self.ok < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"load stalled: {self.ok}/{target} requests, failures {self.failures[-5:]}")
            time.sleep(0.2)
