"""Name → class registries for tasks and heads, filled from built-ins, entry points and folders of Python files.

Files found in folders (``--tasks-dir``, ``SPAMLANG_TASKS_PATH``) are trusted code: they are imported and run.
A file that fails to import is reported by name and skipped; the rest still load.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import pkgutil
import sys
import warnings
from pathlib import Path
from typing import Generic, Iterable, TypeVar

from spamlang.errors import SpamLangError

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes of one base, registered under a unique ``name`` class attribute."""

    def __init__(self, kind: str, base: type, builtin_package: str, entry_point_group: str,
                 path_env: str | None = None):
        self.kind, self.base = kind, base
        self.builtin_package, self.entry_point_group, self.path_env = builtin_package, entry_point_group, path_env
        self._classes: dict[str, type] = {}
        self._origins: dict[str, str] = {}
        self._folders_loaded: set[Path] = set()
        self._loaded = False

    # -- registration -------------------------------------------------------------------------------------------
    def register(self, cls: type) -> type:
        """Class decorator: add ``cls`` under ``cls.name``; refuse wrong bases, missing names and duplicates."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{self.kind} {cls!r} must subclass {self.base.__name__}")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} class {cls.__qualname__} needs a non-empty string attribute 'name'")
        origin = getattr(sys.modules.get(cls.__module__), "__file__", None) or cls.__module__
        known = self._classes.get(name)
        if known is not None and known is not cls and self._origins[name] != origin:
            raise SpamLangError(f"{self.kind} '{name}' is defined twice: in {self._origins[name]} and in {origin}")
        self._classes[name], self._origins[name] = cls, origin
        return cls

    # -- discovery ----------------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.builtin_package)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.builtin_package}.{info.name}")
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            try:
                self.register(ep.load())
            except Exception as exc:  # a broken plugin must not hide the others
                self._report(f"entry point '{ep.name}' ({ep.value})", exc)
        if self.path_env and os.environ.get(self.path_env):
            self.load_folders(p for p in os.environ[self.path_env].split(os.pathsep) if p)

    def load_folders(self, folders: Iterable[str | os.PathLike]) -> None:
        """Import every ``*.py`` file (not starting with '_') of each folder; report and skip broken files."""
        self._ensure_loaded()
        for folder in folders:
            folder = Path(folder).expanduser().resolve()
            if folder in self._folders_loaded:
                continue
            if not folder.is_dir():
                raise SpamLangError(f"{self.kind} folder not found: {folder}")
            self._folders_loaded.add(folder)
            for file in sorted(folder.glob("*.py")):
                if not file.name.startswith("_"):
                    self._import_file(file)

    def _import_file(self, file: Path) -> None:
        module_name = f"spamlang_user_{self.kind}s.{file.stem}_{abs(hash(str(file))) % 10**8}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
        except SpamLangError:
            sys.modules.pop(module_name, None)
            raise
        except Exception as exc:
            sys.modules.pop(module_name, None)
            self._report(str(file), exc)

    def _report(self, where: str, exc: BaseException) -> None:
        warnings.warn(f"could not load {self.kind} from {where}: {type(exc).__name__}: {exc}", RuntimeWarning,
                      stacklevel=3)

    # -- lookup -------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._classes)

    def description(self, name: str) -> str:
        """The first line of the class's docstring."""
        doc = (inspect.getdoc(self.get(name)) or "").strip()
        return doc.splitlines()[0] if doc else ""

    def get(self, name: str) -> type:
        self._ensure_loaded()
        try:
            return self._classes[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._classes, n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise SpamLangError(f"unknown {self.kind} '{name}' (known: {', '.join(self.names())}){hint}") from None
