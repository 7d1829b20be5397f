"""Without the OpenTelemetry API, or with it and no providers, units record nothing and cost little.

The first case runs in a fresh interpreter where ``import opentelemetry``
fails, as it does when the ``otel`` extra is not installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

WITHOUT_API = textwrap.dedent(
    """
    import sys
    sys.modules["opentelemetry"] = None  # what an interpreter without the API raises
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import scoped_session, sessionmaker
    import wsgi_sqla
    from wsgi_sqla import _telemetry, _unit, SessionMiddleware

    assert _telemetry.tracing is None and _unit.tracing is None
    db = scoped_session(sessionmaker(bind=create_engine("sqlite://")))

    def app(environ, start_response):
        db.execute(text("SELECT 1"))
        start_response("200 OK", [])
        return [b"ok"]

    body = SessionMiddleware(app, db)({"REQUEST_METHOD": "GET", "PATH_INFO": "/"},
                                      lambda status, headers, exc_info=None: None)
    list(body)
    body.close()
    unit = _unit.UnitOfWork((db,))
    assert not hasattr(unit, "_trace"), "a unit stored telemetry without the API"
    print("untraced")
    """
)


def test_without_the_api_the_hooks_are_none_and_requests_run() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_API], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "untraced"


WITHOUT_PROVIDER = textwrap.dedent(
    """
    from wsgi_sqla._telemetry import tracing

    record = tracing.start()
    assert not record.span.is_recording(), "no provider was set, yet the span records"
    assert not record.span.get_span_context().is_valid
    print("not recording")
    """
)


def test_with_the_api_and_no_provider_the_unit_span_does_not_record() -> None:
    pytest.importorskip("opentelemetry.trace", reason="pip install -e '.[otel]'")
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_PROVIDER], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "not recording"


METRICS_ONLY = textwrap.dedent(
    """
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import scoped_session, sessionmaker
    from wsgi_sqla import SessionMiddleware

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    db = scoped_session(sessionmaker(bind=create_engine("sqlite://")))

    def app(environ, start_response):
        db.execute(text("SELECT 1"))
        start_response("200 OK", [])
        return [b"ok"]

    body = SessionMiddleware(app, db)({"REQUEST_METHOD": "GET", "PATH_INFO": "/"},
                                      lambda status, headers, exc_info=None: None)
    list(body)
    body.close()
    found = {
        m.name: sum(getattr(p, "count", None) or getattr(p, "value", 0) for p in m.data.data_points)
        for r in reader.get_metrics_data().resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
    }
    print(found["wsgi_sqla.units"], found["db.client.operation.duration"])
    """
)


def test_metrics_are_recorded_with_a_meter_provider_and_no_tracer_provider() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="pip install -e '.[test]'")
    done = subprocess.run(
        [sys.executable, "-c", METRICS_ONLY], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"], "one unit, one COMMIT"
