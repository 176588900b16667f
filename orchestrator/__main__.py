"""`python -m qkdnet.orchestrator`: the `qkdnet` command line."""

import sys

from .cli.main import main

sys.exit(main())
