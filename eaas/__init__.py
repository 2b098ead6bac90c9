"""eaas: Expert-as-a-Service serving for Mixture-of-Experts LLMs."""

__version__ = "0.1.0"
