"""``python -m framework.zoo``: the command is :mod:`framework.commands.zoo`."""
import sys

from framework.commands.zoo import main

if __name__ == "__main__":
    sys.exit(main())
