"""Models: load/save Hugging Face causal LMs and tokenizers, per-token logprobs, tiny local models."""
