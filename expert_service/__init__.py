"""Expert service: a stateless gRPC server computing the weighted combine of its experts."""
