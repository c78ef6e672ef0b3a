"""``python3 -m evo_agent.delivery {cycle,describe,snapshot}``: the daemon's child process."""

import sys

from evo_agent.delivery.cycle import child_main

sys.exit(child_main())
