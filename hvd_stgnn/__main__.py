"""`python -m hvd_stgnn ...`: the same as the `hvd-stgnn` console script."""

import sys

from hvd_stgnn.cli import main

sys.exit(main())
