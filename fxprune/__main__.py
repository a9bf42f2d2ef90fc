"""``python -m fxprune``: the same as the ``fxprune`` console script (see fxprune.tools.cli)."""
import sys

from .tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
