"""Hugging Face model folders in and out (safetensors, no torch): GPT-2 and LLaMA weights
(api.py, gpt2.py, llama.py), and byte-level BPE ``tokenizer.json`` files as tiktoken
encodings (tokenizer.py)."""

from arlm_jax.convert.hf.api import config_from_hf, from_hf, to_hf
from arlm_jax.convert.hf.tokenizer import encoding_from_tokenizer_json, tokenizer_from_hf

__all__ = ["config_from_hf", "from_hf", "to_hf", "encoding_from_tokenizer_json", "tokenizer_from_hf"]
