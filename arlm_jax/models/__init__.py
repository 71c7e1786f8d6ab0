"""Model families behind one interface (api.py) and their registry; shared layers (layers.py).

Importing this package registers the built-in families: ``transformer``.
"""

from arlm_jax.models.api import Family, families, family_of, get_family, register
from arlm_jax.models import transformer  # noqa: F401  (registers the family)

__all__ = ["Family", "families", "family_of", "get_family", "register"]
