"""``python -m lapo ...`` runs the ``lapo`` command (also under ``torchrun -m lapo``)."""

import sys

from lapo.cli import main

sys.exit(main())
