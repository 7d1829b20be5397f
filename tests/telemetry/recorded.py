"""What the OpenTelemetry SDK recorded, in memory, for the telemetry tests.

The SDK's providers are global and can be set once per process, so
:func:`recorded` sets them the first time a test asks (an in-memory span
exporter, and a metric reader with delta temporality so that each
collection holds only what happened since the last one) and afterwards
only clears what an earlier test left.
"""

# pyright: reportPossiblyUnboundVariable=false, reportOptionalMemberAccess=false
# (the SDK's names are bound, and trace is not None, only when the SDK imports; recorded()
# skips before it uses them otherwise.)

from __future__ import annotations

from typing import Any

import pytest
from support import missing

try:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        InMemoryMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind, StatusCode
except ImportError:  # the test extra installs the SDK; the telemetry fixture says so
    SDK = False
    trace = SpanKind = StatusCode = None  # type: ignore[assignment,misc]
else:
    SDK = True

__all__ = ["Recorded", "SpanKind", "StatusCode", "attributes", "key", "recorded", "trace"]

_providers: tuple[Any, Any] | None = None


class Recorded:
    """The finished spans and the metrics since the last :meth:`metrics` call."""

    def __init__(self, exporter: Any, reader: Any) -> None:
        self.exporter = exporter
        self.reader = reader

    def spans(self) -> list[ReadableSpan]:
        """Every finished span, in the order they ended."""
        return list(self.exporter.get_finished_spans())

    def units(self) -> list[ReadableSpan]:
        """The finished ``wsgi_sqla.unit`` spans."""
        return [span for span in self.spans() if span.name == "wsgi_sqla.unit"]

    def unit(self) -> ReadableSpan:
        """The one unit span; fails when there is not exactly one."""
        units = self.units()
        assert len(units) == 1, [dict(span.attributes or {}) for span in units]
        return units[0]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        """The finished spans whose parent is ``parent``."""
        assert parent.context is not None
        parent_id = parent.context.span_id
        return [s for s in self.spans() if s.parent is not None and s.parent.span_id == parent_id]

    def metrics(self) -> dict[str, dict[frozenset[tuple[str, Any]], float]]:
        """``{metric: {attributes: value}}`` since the last call (a histogram's: its count)."""
        found: dict[str, dict[frozenset[tuple[str, Any]], float]] = {}
        gauges: set[str] = set()
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points = found.setdefault(metric.name, {})
                    if isinstance(metric.data, Gauge):
                        gauges.add(metric.name)
                    for point in metric.data.data_points:
                        key = frozenset((point.attributes or {}).items())
                        value = getattr(point, "count", None)
                        points[key] = points.get(key, 0) + (
                            value if value is not None else point.value
                        )
        # A delta counter that saw nothing in the interval may still report 0: left out.
        return {
            name: {k: v for k, v in points.items() if v or name in gauges}
            for name, points in found.items()
        }

    def clear(self) -> None:
        self.exporter.clear()
        self.reader.get_metrics_data()


def recorded() -> Recorded:
    """The process's in-memory span exporter and metric reader, emptied."""
    global _providers
    if not SDK:
        missing("the OpenTelemetry SDK is not installed: pip install -e '.[test]'")
    from wsgi_sqla._telemetry import tracing

    if tracing is None:
        pytest.fail("the OpenTelemetry SDK is installed but wsgi_sqla found no API")
    if _providers is None:
        exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(tracer_provider)
        delta = AggregationTemporality.DELTA
        reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _providers = (exporter, reader)
    found = Recorded(*_providers)
    found.clear()
    return found


def attributes(span: ReadableSpan) -> dict[str, Any]:
    """The span's attributes as a plain dict."""
    return dict(span.attributes or {})


def key(**attributes: Any) -> frozenset[tuple[str, Any]]:
    """A metric point's attributes, spelled as keywords with dots as double underscores."""
    return frozenset((name.replace("__", "."), value) for name, value in attributes.items())
