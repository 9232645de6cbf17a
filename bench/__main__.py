"""``python -m bench``: the whole streaming benchmark on one command."""

import sys

from bench.run import main

sys.exit(main())
