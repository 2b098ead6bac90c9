"""Tiny random MoE checkpoints written by transformers' own save_pretrained (the numerical oracle)."""

from __future__ import annotations

import pytest
from hf_checkpoints import write_hf_checkpoint

from eaas.model.tiny import ARCHES


@pytest.fixture(scope="session", params=ARCHES)
def hf_checkpoint(request, tmp_path_factory):
    """(arch, directory, transformers model) for every supported family."""
    path = tmp_path_factory.mktemp(request.param)
    model = write_hf_checkpoint(path, request.param, seed=1)
    return request.param, path, model


@pytest.fixture(scope="session")
def mixtral_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixtral-tok")
    write_hf_checkpoint(path, "mixtral", seed=2, with_tokenizer=True)
    return path
