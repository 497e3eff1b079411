"""``python -m sockety.server``: the ``sockety-server`` command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
