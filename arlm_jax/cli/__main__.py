"""``python -m arlm_jax.cli`` runs the ``arlm`` command."""

import sys

from arlm_jax.cli.main import main

sys.exit(main())
