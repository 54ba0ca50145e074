"""`python -m wavlink.evaluation TASK ...` (and `accelerate launch -m wavlink.evaluation ...`): see `wavlink-eval`."""

import sys

from .cli import main

sys.exit(main())
