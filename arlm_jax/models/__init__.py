"""Model families behind one interface (api.py) and their registry; shared layers (layers.py).

Importing this package registers the built-in families: ``transformer``, the recurrent ``rnn``,
``lstm`` and ``gru``, the counted ``ngram``, and ``bigram`` (a toy that docs/model-families.md
builds step by step). precision.py decides what ``matmul_dtype='auto'`` means on this machine.
"""

from arlm_jax.models.api import Family, Fitted, families, family_of, get_family, register
from arlm_jax.models import bigram, ngram, rnn, transformer  # noqa: F401  (each registers its family)

__all__ = ["Family", "Fitted", "families", "family_of", "get_family", "register"]
