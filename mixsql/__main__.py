"""``python -m mixsql``: the same as the ``mixsql`` console script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
