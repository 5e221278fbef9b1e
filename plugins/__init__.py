"""Built-in parts, one module per part (or family), each registering itself with a decorator.

``framework`` never imports this package by name: it is an entry point of the group ``blip2_framework.plugins``
(``pyproject.toml``), and ``framework.core.registry.discover_plugins`` imports every module below it, each on its own,
exactly as it does a user's own plugin package.
"""
