"""A user's first calls: the SDK and the official `openai` client through the gateway Service of a
MoEDeployment running as pods, both equal to transformers.generate."""

from __future__ import annotations

import openai
from cluster_deploy import NAME, NAMESPACE, diagnose
from cluster_kube import wait_for
from cluster_load import MAX_TOKENS, gateway_http

from eaas.client import SyncClient


def test_kubectl_get_moed_shows_every_group_and_gateway_ready(cluster, deployment):
    # Ready means serving (every group and at least one gateway), so the second gateway may still be
    # starting when it turns True; what a user then sees settles at every replica ready.
    def every_replica_ready():
        out = cluster.kubectl("-n", NAMESPACE, "get", "moed", NAME)
        return out if out.splitlines()[1].split()[1:4] == ["2/2", "2/2", "True"] else None

    print(wait_for(every_replica_ready, "kubectl get moed: 2/2 groups, 2/2 gateways, Ready", timeout=300,
                   interval=1.0, diagnose=lambda: diagnose(cluster)))


def test_sdk_greedy_tokens_equal_transformers(deployment, reference):
    with SyncClient([deployment["address"]], timeout=120) as client:
        for prompt in reference.prompts:
            got = client.generate(prompt_ids=prompt, max_tokens=MAX_TOKENS, ignore_eos=True).token_ids
            assert got == reference.expected(prompt), prompt


def test_openai_client_greedy_completion_equals_transformers(cluster, deployment, reference):
    client = openai.OpenAI(base_url=gateway_http(cluster, NAMESPACE, NAME) + "/v1", api_key="unused")
    model = client.models.list().data[0].id
    for prompt in reference.prompts[:3]:
        done = client.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                         extra_body={"ignore_eos": True})
        expected = reference.expected(prompt)
        choice = done.choices[0]
        assert choice.text == reference.tokenizer.decode(expected, skip_special_tokens=True)
        assert (choice.model_extra or {}).get("token_ids", expected) == expected
