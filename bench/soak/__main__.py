"""``python -m bench.soak``: see :mod:`bench.soak` and :mod:`bench.soak.cli`."""

from __future__ import annotations

import sys

from bench.soak.cli import main

sys.exit(main())
