import sys

from hvd_stgnn.cli import main

sys.exit(main())
