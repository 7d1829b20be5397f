"""Entry point: ``python -m bench`` (see :mod:`bench.run`)."""

from .run import main

main()
