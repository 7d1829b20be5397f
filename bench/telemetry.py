"""Instructions per request of the Flask example with telemetry off, no-op, and recorded.

Run under callgrind twice, with N and 2N requests; the difference of the two
totals divided by N is the cost of one request, without the interpreter's
start-up and the warm-up::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.telemetry {none,noop,sdk} N

``none`` expects the OpenTelemetry API not to be installed (it fails
otherwise); ``noop`` has the API without providers (its no-op tracer and
meter); ``sdk`` configures the SDK as an application would: a tracer provider
with a batch span processor (to an exporter that drops the spans) and a meter
provider whose reader is never collected. Each request is ``GET /users/1`` of
``examples/flask_app.py`` on a fresh SQLite file: a read, so one unit that
commits one session.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Any

from werkzeug.test import EnvironBuilder


def configure(mode: str) -> None:
    if mode == "none":
        try:
            import opentelemetry  # noqa: F401
        except ImportError:
            return
        raise SystemExit("mode none: the OpenTelemetry API is installed in this environment")
    if mode == "noop":
        return
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def main(mode: str, count: int) -> None:
    configure(mode)
    directory = tempfile.mkdtemp()
    os.environ["DATABASE_URL"] = f"sqlite:///{directory}/bench.sqlite3"
    from examples.flask_app import app
    from examples.models import Base, User, engine

    from wsgi_sqla import transaction

    try:
        from wsgi_sqla._telemetry import tracing
    except ImportError:  # a checkout from before telemetry, measured for comparison
        tracing = None
    assert (tracing is None) == (mode == "none"), (mode, tracing)
    Base.metadata.create_all(engine)
    with transaction(User.__session__):  # type: ignore[attr-defined]
        User(name="ann").save()
    builder = EnvironBuilder(path="/users/1")
    environ = builder.get_environ()
    builder.close()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        assert status.startswith("200"), status
        return None

    for _ in range(100 + count):  # 100 warm-up requests, then the measured ones
        body = app(dict(environ), start_response)
        for _chunk in body:
            pass
        body.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
