"""Data: corpora and the token cache (tokens.py), batches of windows from it (batches.py),
tokenizers (tokenizer.py) and byte-level BPE training (bpe.py)."""
