"""``python -m agent`` does the same as the ``emotion-agent`` console script."""

import sys

from agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
