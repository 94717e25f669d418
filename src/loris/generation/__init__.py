"""Text generation: KV cache, sampling, stop criteria."""
