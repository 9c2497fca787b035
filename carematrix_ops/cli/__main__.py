"""``python -m carematrix_ops.cli``, the same as the ``carematrix`` command."""

import sys

from carematrix_ops.cli import main

sys.exit(main())
