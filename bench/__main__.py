"""Entry point: ``python -m bench`` (see :mod:`bench.run`)."""

from . import plain  # noqa: F401  (first: opentelemetry not importable, see bench/plain.py)
from .run import main

main()
