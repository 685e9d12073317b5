"""`python -m failclosed_interp.cli ...`."""

import sys

from failclosed_interp.cli import main

if __name__ == "__main__":
    sys.exit(main())
