"""`python -m wavlink.search FOLDER --model M --out X.index` (and `accelerate launch -m wavlink.search ...`)."""

import sys

from .index import index_main

sys.exit(index_main())
