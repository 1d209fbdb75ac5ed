"""Models: the character tokenizer, the tiny Llama builder, its warm start, and loading any HF model."""
