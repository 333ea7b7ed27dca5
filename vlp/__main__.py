"""`python -m vlp ...`, the same as the `vlp` command (a sweep starts its runs this way)."""

import sys

from vlp.cli import main

sys.exit(main())
