"""Model side: checkpoints, families, the dense/expert split and expert math."""
