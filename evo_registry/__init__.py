"""The registry: the backend that receives the agents' reports.

It lives beside the agent in the same repository but is installed on its own
(``pip install .[registry]``); nothing of it goes into the appliance's .deb.
"""

from __future__ import annotations

__version__ = "0.1.0"
