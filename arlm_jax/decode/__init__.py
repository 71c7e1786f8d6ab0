"""Decoding: samplers (sampling.py), inputs checked once (inputs.py), prefill plus one compiled
scan (generate.py), beam search (beam.py) and speculative decoding (speculative.py), all through
the model-family interface (models/api.py)."""
