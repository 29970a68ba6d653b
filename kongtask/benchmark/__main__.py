"""``python -m kongtask.benchmark ARGS`` is ``kongtask bench ARGS``."""

import sys

from . import main

sys.exit(main())
