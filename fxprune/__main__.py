"""``python -m fxprune``: the same as the ``fxprune`` console script (see fxprune.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
