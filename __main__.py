"""``python -m modaloom`` runs the CLI (``torchrun -m modaloom train ...`` too)."""

import sys

from modaloom.core.cli import main

sys.exit(main())
