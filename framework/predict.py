"""``python -m framework.predict``: the command is :mod:`framework.commands.predict`."""
import sys

from framework.commands.predict import main

if __name__ == "__main__":
    sys.exit(main())
