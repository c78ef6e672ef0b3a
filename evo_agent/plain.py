"""Value classes without ``dataclasses``: what the inventory's path needs of @dataclass.

``@dataclass`` imports inspect, ast and dis, and writes and compiles the methods of each class it
decorates at import time.  Measured with callgrind on Debian's python 3.11: 18M instructions for the
import and about 2.6M per class; the ten classes on the path of ``evo-agent inventory`` cost more
than all the collectors' reading of sysfs, and a QEMU TCG guest runs about 160M instructions a
second.  So those classes spell their ``__init__`` out and inherit the rest from here: a repr and an
equality over ``_fields``, as a dataclass has (and, frozen, a hash and no assignment).

Likewise, the modules on that path import ``typing`` only for the type checker
(``TYPE_CHECKING = False`` then ``if TYPE_CHECKING: from typing import ...``, which mypy reads as
true): with ``from __future__ import annotations`` nothing of it is needed at run time, and its
import cost 9.5M instructions.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time (see evo_agent/plain.py)
if TYPE_CHECKING:
    from typing import Any, ClassVar



class Plain:
    """A mutable value class: repr and equality over ``_fields``, unhashable (as @dataclass)."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __repr__(self) -> str:
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__qualname__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plain) or other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable (as @dataclass)


class FrozenPlain(Plain):
    """An immutable value class (as @dataclass(frozen=True)): hashable, no assignment."""

    def _set(self, **values: Any) -> None:
        """Set the fields once, from ``__init__``."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: {type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: {type(self).__name__} is frozen")

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(self._values())
