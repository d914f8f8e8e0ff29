"""``python -m twinme_ops.cli``: the ``twinme-ops`` command."""

import sys

from twinme_ops.cli import main

sys.exit(main())
