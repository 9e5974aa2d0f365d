"""Registries of backbones, datasets and strategies, and the plug-ins that add to them.

A registry maps a name to an entry and remembers where each entry came from: ``bench`` for the built-in ones,
else the plug-in module that registered it. Everything registers through ``Registry.add`` (or its
``register`` decorator), bench's own entries included, when the module holding them is imported.

A plug-in is a module that registers entries when imported: a module an installed package names under one of the
entry-point groups ``bench.backbones``, ``bench.datasets``, ``bench.strategies`` (``[project.entry-points]`` in
its ``pyproject.toml``), or a module a suite names under ``plugins:``. ``load_plugins`` imports them, in the
driver and in every Ray worker before its first trial. A plug-in that fails to import, or registers a name that
is already taken, is a ``UserError`` naming the plug-in (one line, exit 2). This module imports neither torch nor
Ray: a suite that names only bundled entries validates without them.
"""

from __future__ import annotations

import contextlib
import importlib
import traceback
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from bench.errors import UserError

T = TypeVar("T")
BUILTIN = "bench"
ENTRY_POINT_GROUPS = ("bench.backbones", "bench.datasets", "bench.strategies")

_loading: list[str] = []  # the plug-in being imported (innermost last): the source of what it registers


class Registry(Generic[T]):
    """Named entries of one kind, each with the source that registered it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._sources: dict[str, str] = {}

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; a name registered twice is a UserError naming both sources."""
        source = _loading[-1] if _loading else BUILTIN
        if name in self._entries:
            raise UserError(
                f"{_describe(source)} registers {self.kind} '{name}', already registered by "
                f"{_describe(self._sources[name])}"
            )
        self._entries[name] = entry
        self._sources[name] = source
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``: ``@BACKBONES.register("my_net")`` over the entry."""
        return lambda entry: self.add(name, entry)

    def get(self, name: str) -> T | None:
        return self._entries.get(name)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def source(self, name: str) -> str:
        """``bench`` or the plug-in module that registered ``name``."""
        return self._sources[name]


def _describe(source: str) -> str:
    return "bench" if source == BUILTIN else f"plug-in '{source}'"


@contextlib.contextmanager
def _registering_as(source: str) -> Iterator[None]:
    _loading.append(source)
    try:
        yield
    finally:
        _loading.pop()


_loaded: dict[str, None] = {}  # imported plug-in modules, in order


# The modules that register bench's own entries: imported before any plug-in, so that what they register is
# bench's even when a plug-in's import is what first imports them.
BUILTIN_MODULES = ("bench.models.registry", "bench.data.registry", "bench.models.strategies")


def load_plugin(module: str) -> None:
    """Import ``module`` as a plug-in (once per process): what it registers is credited to it."""
    if module in _loaded:
        return
    for builtin in BUILTIN_MODULES:
        importlib.import_module(builtin)
    with _registering_as(module):
        try:
            importlib.import_module(module)
        except UserError:
            raise
        except BaseException as error:  # SyntaxError, ImportError, anything its import runs into
            where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
            at = f" ({where.filename}:{where.lineno})" if where else ""
            raise UserError(f"plug-in '{module}' failed to import: {type(error).__name__}: {error}{at}") from None
    _loaded[module] = None


def loaded_plugins() -> list[str]:
    """The plug-in modules this process has imported, in order."""
    return list(_loaded)


def entry_point_modules() -> list[str]:
    """The modules installed packages name under bench's entry-point groups, in a stable order."""
    modules = []
    for group in ENTRY_POINT_GROUPS:
        for point in sorted(metadata.entry_points(group=group), key=lambda p: p.name):
            module = point.value.split(":", 1)[0].strip()
            if module not in modules:
                modules.append(module)
    return modules


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Import every installed plug-in, then ``modules`` (a suite's ``plugins:``); the modules imported."""
    names = [*entry_point_modules(), *(m for m in modules if m)]
    for module in names:
        load_plugin(module)
    return names
