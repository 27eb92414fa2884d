"""`python -m planner.cli` runs the edvit command line."""

import sys

from planner.cli import main

sys.exit(main())
