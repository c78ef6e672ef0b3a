"""evo-agent: the on-device inventory agent of the 432 EVO music server."""

__version__ = "0.1.0"
