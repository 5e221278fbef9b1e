"""``python -m framework.train``: the command is :mod:`framework.commands.train`."""
import sys

from framework.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
