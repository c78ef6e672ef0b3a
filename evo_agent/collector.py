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
import importlib.machinery
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
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


def _module_name(filename: str) -> str | None:
    """Return the module a file name is (inspect.getmodulename): its longest import suffix off."""
    for suffix in sorted(importlib.machinery.all_suffixes(), key=len, reverse=True):
        if filename.endswith(suffix):
            return filename[:-len(suffix)]
    return None


def module_names(paths: Iterable[str]) -> list[str]:
    """Return the modules and packages in these directories, as pkgutil.iter_modules names them.

    pkgutil imports inspect (and with it ast and dis) to name them: in a QEMU TCG guest that
    import costs more than listing the directory, so its rules are followed here instead.
    """
    found: list[str] = []
    for path in paths:
        try:
            filenames = sorted(os.listdir(path))  # packages before same-named modules
        except OSError:
            continue
        for filename in filenames:
            name = _module_name(filename)
            if name == "__init__" or name in found:
                continue
            if not name:
                full = os.path.join(path, filename)
                if "." in filename or not os.path.isdir(full):
                    continue
                try:
                    inside = os.listdir(full)
                except OSError:
                    continue
                if not any(_module_name(f) == "__init__" for f in inside):
                    continue  # a directory without __init__ is no package (__pycache__)
                name = filename
            if "." not in name:
                found.append(name)
    return found


def discover() -> dict[str, type[Collector]]:
    """Return every available collector class by name: the ``collectors`` package, then plugins."""
    import collectors as builtin

    found: dict[str, type[Collector]] = {}
    for name in sorted(module_names(builtin.__path__)):
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


def plugins_may_exist(path: list[str] | None = None) -> bool:
    """Return False only when no distribution on ``path`` (sys.path) declares a plugin collector.

    ``importlib.metadata`` costs more than all the built-in collectors together in a QEMU TCG
    guest (it imports email, zipfile and csv, then reads every distribution's metadata), while
    the appliance has no plugin.  So the distributions it would find are looked at first, the way
    it finds them (``*.dist-info`` and ``*.egg-info`` directories of each path entry, and the
    ``EGG-INFO`` of ``*.egg`` directories): only when an ``entry_points.txt`` names the group, or
    when something cannot be looked at this way (a zip file on the path, a meta path finder with
    distributions of its own), does the full scan run.
    """
    import sys
    from importlib.machinery import PathFinder

    if any(hasattr(finder, "find_distributions") and finder is not PathFinder
           for finder in sys.meta_path):
        return True
    group = ENTRY_POINT_GROUP.encode()
    for entry in sys.path if path is None else path:
        try:
            names = os.listdir(entry or ".")
        except NotADirectoryError:
            return True  # a zip file: its metadata is inside
        except OSError:
            continue
        for name in names:
            low = name.lower()
            if low.endswith((".dist-info", ".egg-info")):
                meta = os.path.join(entry, name, "entry_points.txt")
            elif low.endswith(".egg"):
                if os.path.isfile(os.path.join(entry, name)):
                    return True
                meta = os.path.join(entry, name, "EGG-INFO", "entry_points.txt")
            else:
                continue
            try:
                with open(meta, "rb") as fh:
                    if group in fh.read():
                        return True
            except OSError:
                continue
    return False


def _entry_point_collectors() -> list[type[Collector]]:
    if not plugins_may_exist():
        return []
    from importlib.metadata import entry_points

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
