"""Reasoning: the multimodal LLM, its rewards and the GRPO loss."""
