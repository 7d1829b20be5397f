"""examples/flask_app.py under opentelemetry-instrumentation-wsgi, its spans in a file.

Each worker writes every finished span as one JSON line to the file named by
``WSGI_SQLA_SPANS`` (the SDK's console exporter, pointed at that file), so
the test reads the traces the way a collector would receive them.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from examples.flask_app import app as flask_app


def _line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


_spans = open(os.environ["WSGI_SQLA_SPANS"], "a", buffering=1)  # noqa: SIM115 - the worker's life
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=_spans, formatter=_line)))
trace.set_tracer_provider(_provider)

app = OpenTelemetryMiddleware(flask_app)
