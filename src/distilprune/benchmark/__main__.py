"""``python -m distilprune.benchmark``: benchmark one model in this (fresh) process."""

import sys

from distilprune.benchmark.speed import main

sys.exit(main())
