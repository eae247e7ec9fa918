"""``python -m rvos_batch`` is ``rvos-batch``."""

import sys

from rvos_batch.cli import main

sys.exit(main())
