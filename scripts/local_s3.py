"""A real S3 server on loopback: `python scripts/local_s3.py --help`; its code is
devservers/local_s3_commands.py, over the server in devservers/local_s3.py."""

import sys
from pathlib import Path

# Run as a script from anywhere: the checkout's root holds the devservers package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devservers.local_s3_commands import main

if __name__ == "__main__":
    sys.exit(main())
