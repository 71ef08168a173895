"""``python -m ltpa`` (and ``torchrun -m ltpa``) run the command-line interface."""

import sys

from ltpa.cli import main

sys.exit(main())
