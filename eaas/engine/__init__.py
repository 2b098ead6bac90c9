"""Generation engine: sequences, scheduler, packed KV cache, model runner, continuous batching loop."""
