"""Kubernetes operator (kopf) for MoEDeployment; imported as eaas.operator (never as top-level operator)."""
