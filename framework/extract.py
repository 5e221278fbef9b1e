"""``python -m framework.extract``: the command is :mod:`framework.commands.extract`."""
import sys

from framework.commands.extract import main

if __name__ == "__main__":
    sys.exit(main())
