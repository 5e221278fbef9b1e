"""``python -m framework.convert``: the command is :mod:`framework.commands.convert`."""
import sys

from framework.commands.convert import main

if __name__ == "__main__":
    sys.exit(main())
