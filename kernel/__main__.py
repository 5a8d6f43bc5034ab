"""`python -m kernel`: see `kernel/cli.py`."""
import sys

from kernel.cli import main

if __name__ == "__main__":
    sys.exit(main())
