"""``python -m evo_agent``: the same entry point as ``/usr/bin/evo-agent``."""

import sys

from evo_agent.cli import main

sys.exit(main())
