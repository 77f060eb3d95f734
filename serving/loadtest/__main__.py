"""``python -m serving.loadtest ...``: what ``shipyard loadtest ...`` runs."""

import sys

from serving.loadtest.cli import main

sys.exit(main())
