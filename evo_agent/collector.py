"""The collector interface, and how collectors are found.

A collector is one module of the ``collectors`` package (or of a third party, registered under the
``evo_agent.collectors`` entry point group) that defines a subclass of :class:`Collector`.  It has
one method, :meth:`Collector.collect`, which reads the system through a :class:`Host` and returns a
dict of raw values.  It declares the names of those values in :attr:`Collector.fields`; the privacy
filter (``evo_agent.policy``) is the one place that decides which of them leave the device, so a
collector may well return more than is ever sent (``evo-agent inventory --raw`` shows it all).

Adding a collector touches one file: drop a module into ``collectors/`` (or ship a package with an
entry point), and declare in the policy file which of its fields the published policy covers.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, ClassVar

from evo_agent.hostroot import Host

LOG = logging.getLogger(__name__)

#: Raw values a collector may return: JSON-like data.
Raw = dict[str, Any]

ENTRY_POINT_GROUP = "evo_agent.collectors"


class Collector(ABC):
    """One source of inventory data."""

    #: Short lowercase word, equal to the module name and the config key ``[collectors.NAME]``.
    name: ClassVar[str]
    #: One line shown by ``evo-agent collectors``.
    description: ClassVar[str]
    #: Every key :meth:`collect` may return, with a one-line description.
    fields: ClassVar[Mapping[str, str]]
    #: Options accepted in ``[collectors.NAME]``: name -> (type, default).
    options: ClassVar[Mapping[str, tuple[type, Any]]] = {}
    #: Whether the collector runs unless the config disables it.
    default_enabled: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any] | None = None, *, timeout: float = 10.0) -> None:
        merged = {key: default for key, (_type, default) in self.options.items()}
        merged.update(options or {})
        self.opts: dict[str, Any] = merged
        #: Time limit for each command the collector runs.
        self.timeout = timeout

    @abstractmethod
    def collect(self, host: Host) -> Raw:
        """Read the host and return raw values; keys not found are None (or an empty list)."""


def _collectors_in(module: Any) -> list[type[Collector]]:
    found = []
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Collector)
            and value is not Collector
            and value.__module__ == module.__name__
            and not getattr(value, "__abstractmethods__", None)
        ):
            found.append(value)
    return found


def discover() -> dict[str, type[Collector]]:
    """Return every available collector class by name: the ``collectors`` package, then plugins."""
    import collectors as builtin

    found: dict[str, type[Collector]] = {}
    for module_info in pkgutil.iter_modules(builtin.__path__):
        name = module_info.name
        if name.startswith("_"):
            continue
        module = importlib.import_module(f"{builtin.__name__}.{name}")
        for cls in _collectors_in(module):
            found[cls.name] = cls
    for cls in _entry_point_collectors():
        if cls.name in found:
            LOG.warning("plugin collector %s ignored: a built-in collector has that name", cls.name)
            continue
        found[cls.name] = cls
    return found


def _entry_point_collectors() -> list[type[Collector]]:
    classes: list[type[Collector]] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not stop the inventory
            LOG.warning("plugin collector %s cannot be loaded: %s", ep.name, exc)
            continue
        if isinstance(obj, type) and issubclass(obj, Collector):
            classes.append(obj)
        else:
            LOG.warning("plugin collector %s is not a Collector subclass", ep.name)
    return classes
