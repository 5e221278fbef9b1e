"""``python -m framework.parts``: the command is :mod:`framework.commands.parts`."""
import sys

from framework.commands.parts import main

if __name__ == "__main__":
    sys.exit(main())
