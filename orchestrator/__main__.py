"""`python -m qkdnet.orchestrator`: the `qkdnet` command line."""

import sys

from .cli import main

sys.exit(main())
