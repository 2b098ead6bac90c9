"""Gateway: dense model + continuous batching + remote expert dispatch, gRPC and OpenAI HTTP APIs."""
