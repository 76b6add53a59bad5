"""A small typed registry: stages, eval configurations, rules, prompt sources, compressors.

Names are registered with a decorator; a duplicate name is a bug and raises, a typo at lookup time
gets a "did you mean" answer listing the valid choices (as lm-eval's `api/registry.py` does).
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import UnknownChoice

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} is registered twice")  # a bug, not a user error
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str, setting: str = "") -> T:
        """The entry called `name`; `setting` (e.g. `merge.method`) is named in the error for a typo.

        Raises:
            UnknownChoice: no such entry; the message suggests the closest name and lists the valid ones.
        """
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownChoice(self.unknown(name, setting)) from None

    def unknown(self, name: object, setting: str = "") -> str:
        """The one-line message for a name that is not registered."""
        close = difflib.get_close_matches(str(name), list(self._items), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        where = f"{setting}={name}: " if setting else ""
        return f"{where}unknown {self.kind} {name!r}.{hint} Valid: {', '.join(sorted(self._items))}"

    def unregister(self, name: str) -> None:
        """Forget `name`: for a plugin whose loading failed after it registered (nothing half-loaded stays)."""
        self._items.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
