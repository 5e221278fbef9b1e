"""Built-in parts. Every module below this package is imported by ``framework.registry.discover_plugins``."""
