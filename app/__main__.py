"""`python -m app ...`: the service's command line (app/server/cli.py)."""

import sys

from app.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
