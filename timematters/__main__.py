"""``python -m timematters``: the command line."""

import sys

from timematters.cli import main

sys.exit(main())
