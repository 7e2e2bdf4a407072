"""Keep a package's public functions from being shadowed by submodules of the same name.

The import system binds every imported submodule as an attribute of its package, so after
``import landscape.surface`` the name ``landscape.surface`` would be the module, not the
``surface()`` function of the public API. :func:`shield` makes the package ignore that
binding for the given names; the package's ``__getattr__`` then serves the function.
Import the modules themselves with ``from landscape.surface import ...``.
"""
from __future__ import annotations

import sys
import types


def shield(package_name: str, names: set[str]) -> None:
    """Ignore the import system's binding of submodules ``names`` on package ``package_name``."""
    class _Package(types.ModuleType):
        def __setattr__(self, name, value):
            if isinstance(value, types.ModuleType) and name in names:
                return
            super().__setattr__(name, value)

    sys.modules[package_name].__class__ = _Package
