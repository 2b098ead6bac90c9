"""Fixtures for the operator tests: a real control plane (k8s tier) and helpers shared by unit tests."""

from __future__ import annotations

import pytest

from k8s_testbed import ControlPlane, missing_tools


@pytest.fixture(scope="session")
def control_plane():
    """etcd + kube-apiserver + kube-controller-manager v1.20.2 on free ports; fails (never skips) without them."""
    missing = missing_tools()
    if missing:
        pytest.fail("the k8s test tier needs: " + "; ".join(missing), pytrace=False)
    plane = ControlPlane()
    try:
        plane.start()
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kube(control_plane):
    """A kubernetes ApiClient with admin rights on the test control plane."""
    import kubernetes

    client = kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    yield client
    client.close()
