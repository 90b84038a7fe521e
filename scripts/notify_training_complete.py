#!/usr/bin/env python3
"""The script of earlier releases, now the ``afs`` command under its old name.

    python scripts/notify_training_complete.py status
    python scripts/notify_training_complete.py complete --model M --run-id R --duration 3600 --loss 0.1234
"""

import sys

from afs_core.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], prog="notify_training_complete.py"))
