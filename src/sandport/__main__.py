"""``python -m sandport``: the same as the ``sandport`` command."""

import sys

from .cli import main

sys.exit(main())
