"""``python -m framework.make_shards``: the command is :mod:`framework.commands.make_shards`."""
import sys

from framework.commands.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
