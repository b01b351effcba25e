"""`python -m agent.fleet`: the same as the `edge-fleet` console script."""

import sys

from agent.fleet.cli import main

sys.exit(main())
