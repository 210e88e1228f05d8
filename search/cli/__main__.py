"""`python -m search.cli ...` is `ftsweep ...` (local workers start themselves this way)."""

import sys

from . import main

sys.exit(main())
