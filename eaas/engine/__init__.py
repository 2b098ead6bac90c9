"""Generation engine: sequences, scheduler, paged KV cache from a fixed budget, model runner, continuous batching loop."""
