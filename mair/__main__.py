"""``python -m mair`` runs the ``mair`` command."""

import sys

from mair.cli import main

sys.exit(main())
