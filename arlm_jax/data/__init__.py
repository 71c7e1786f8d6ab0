"""Data: corpora and the token cache with batches (tokens.py), tokenizers (tokenizer.py) and
byte-level BPE training (bpe.py)."""
