"""Every system as a user without the ``otel`` extra runs it: ``import opentelemetry`` fails.

With the OpenTelemetry API importable (the test extra installs it),
wsgi_sqla records each unit of work through the API's no-op tracer and
meter, about 25k instructions a request without providers; the systems are
compared with every optional feature off, so that cost is left out here and
stated on its own (:mod:`bench.instructions`, whose children block the
import the same way). ``python -m bench`` imports this module before
anything else, and its gunicorn servers load their applications through
:func:`wsgi` here, so that the timings and the instructions measure the
same code.
"""

from __future__ import annotations

import sys

sys.modules["opentelemetry"] = None  # type: ignore[assignment]

from .apps import wsgi  # noqa: E402

__all__ = ["wsgi"]
