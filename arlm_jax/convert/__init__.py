"""Conversions between arlm_jax models and other formats: ARPA n-gram files (arpa.py) and
Hugging Face model folders (hf/)."""
