"""``python -m framework.cache_features``: the command is :mod:`framework.commands.cache_features`."""
import sys

from framework.commands.cache_features import main

if __name__ == "__main__":
    sys.exit(main())
