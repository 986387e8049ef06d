"""``python -m nbiafs``: the same as the ``nbiafs`` command."""

import sys

from nbiafs.cli import main

sys.exit(main())
