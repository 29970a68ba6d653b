"""``python -m kongtask`` is the ``kongtask`` command."""

import sys

from .cli import main

sys.exit(main())
