"""`python -m raymlops.cli ...`: the same command as the `raymlops` console script."""

import sys

from raymlops.cli import main

sys.exit(main())
