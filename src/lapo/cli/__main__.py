"""``python -m lapo.cli ...`` runs the ``lapo`` command."""

import sys

from lapo.cli import main

sys.exit(main())
