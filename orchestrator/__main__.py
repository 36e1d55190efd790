"""``python -m orchestrator`` is the same as ``python -m orchestrator.sweep``."""

import sys

from orchestrator.sweep import main

sys.exit(main())
