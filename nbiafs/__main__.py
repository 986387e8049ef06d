"""``python -m nbiafs``: the same as the ``nbiafs`` command."""

import sys

from nbiafs.cli.main import main

sys.exit(main())
