"""``python -m framework.evaluate``: the command is :mod:`framework.commands.evaluate`."""
import sys

from framework.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
