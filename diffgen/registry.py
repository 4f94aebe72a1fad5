"""Names in configs -> the code they select, each name registered beside its code.

    SAMPLERS = Registry('sampler')

    @SAMPLERS.register('ddim')
    def ddim(...): ...

Config validation reads the registries (`names()`) instead of keeping its own lists, and
looking up an unknown name is one ConfigError that lists the known ones.
"""
from __future__ import annotations

from diffgen.errors import ConfigError


class Registry:
    """An ordered mapping name -> object, filled by the `register` decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries = {}

    def register(self, name: str):
        """Decorator: registers the decorated object under name (once)."""
        def decorate(obj):
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f'{self.kind} {name!r} is registered twice')
            self._entries[name] = obj
            return obj
        return decorate

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __getitem__(self, name: str):
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f'unknown {self.kind} {name!r}; choose one of '
                              f'{self.names()}') from None

    def check(self, key: str, name: str):
        """Raises ConfigError `key=name is not one of (...)` unless name is registered."""
        if name not in self._entries:
            raise ConfigError(f'{key}={name!r} is not one of {self.names()}')
