"""Built-in parts. Importing this package imports every module below it, and so registers every built-in part.

``framework`` never imports it by name: the package is an entry point of the group ``blip2_framework.plugins``
(``pyproject.toml``), found by ``framework.registry.discover_plugins`` exactly as a user's own plugin package is.
"""
import importlib
import pkgutil

for _module in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
    importlib.import_module(_module.name)
