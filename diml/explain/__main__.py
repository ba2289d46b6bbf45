"""``python -m diml.explain --checkpoint PATH --query IMG --gallery DIR|IMG --out DIR``: see :mod:`diml.explain.cli`."""

import sys

from diml.explain.cli import main

if __name__ == "__main__":
    sys.exit(main())
