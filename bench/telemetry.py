"""Instructions per request of the Flask example with telemetry off, no-op, and recorded.

One process serves 100 warm-up requests, then N, then 2N, calling
``os.getppid()`` between the batches; under callgrind with
``--dump-before=getppid`` each batch gets its own dump, and the difference
of the two batches' totals divided by N is the cost of one request, with
whatever a batch costs once (and the interpreter's start) cancelled::

    valgrind --tool=callgrind --dump-before=getppid --callgrind-out-file=cg.out \\
        python -m bench.telemetry {none,noop,sdk} N
    python -m bench.telemetry report cg.out N

``python -m bench.telemetry time {none,noop,sdk} N`` times nine batches of
N requests instead, and prints the median microseconds per request.

``none`` expects the OpenTelemetry API not to be installed (it fails
otherwise); ``noop`` has the API without providers (its no-op tracer and
meter); ``sdk`` configures the SDK as an application would: a tracer provider
with a batch span processor (to an exporter that drops the spans) and a meter
provider whose reader is never collected. Each request is ``GET /users/1`` of
``examples/flask_app.py`` on a fresh SQLite file: a read, so one unit that
commits one session. Run it with ``PYTHONHASHSEED=0``.
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
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


def main(mode: str, count: int, timed: bool = False) -> None:
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
    with transaction(User.__session__):
        User(name="ann").save()
    builder = EnvironBuilder(path="/users/1")
    environ = builder.get_environ()
    builder.close()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        assert status.startswith("200"), status
        return None

    def serve(times: int) -> None:
        for _ in range(times):
            body = app(dict(environ), start_response)
            for _chunk in body:
                pass
            body.close()  # type: ignore[attr-defined]

    serve(100)
    if timed:
        batches = []
        for _ in range(9):
            started = time.perf_counter()
            serve(count)
            batches.append((time.perf_counter() - started) / count)
        print(f"{statistics.median(batches) * 1e6:.1f}")
        return
    os.getppid()  # callgrind dumps its counts at each of these marks
    serve(count)
    os.getppid()
    serve(2 * count)
    os.getppid()


def report(dump: str, count: int) -> None:
    """Instructions per request from the dumps of one run: (2N batch - N batch) / N."""
    totals = []
    for part in (2, 3):
        text = Path(f"{dump}.{part}").read_text()
        found = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
        assert found, f"{dump}.{part}: no totals"
        totals.append(int(found.group(1)))
    print((totals[1] - totals[0]) // count)


if __name__ == "__main__":
    if sys.argv[1] == "report":
        report(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "time":
        main(sys.argv[2], int(sys.argv[3]), timed=True)
    else:
        main(sys.argv[1], int(sys.argv[2]))
