"""`python -m mamba_agent ...` is `mamba-agent ...`."""

import sys

from mamba_agent.cli import main

sys.exit(main())
