"""harness.wrk.parse reads what every wrk run prints, and refuses output it cannot read."""

from __future__ import annotations

import pytest

from harness.wrk import parse

CLEAN = """Running 2s test @ http://127.0.0.1:8000/nodb
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   512.00us  101.00us   2.00ms   90.00%
    Req/Sec     7.81k   210.00     8.10k    70.00%
  15544 requests in 2.00s, 2.30MB read
Requests/sec:   7771.52
Transfer/sec:      1.15MB
"""
WITH_ERRORS = CLEAN.replace(
    "Requests/sec:",
    "  Socket errors: connect 0, read 3, write 0, timeout 2\n"
    "  Non-2xx or 3xx responses: 11\nRequests/sec:",
)


def test_a_clean_run_has_its_count_and_rate_and_no_errors() -> None:
    run = parse(CLEAN)
    assert (run.requests, run.rate, run.non_2xx, run.socket_errors) == (
        15544,
        7771.52,
        0,
        (0, 0, 0, 0),
    )
    assert run.errors == 0


def test_non_2xx_answers_and_socket_errors_are_counted() -> None:
    run = parse(WITH_ERRORS)
    assert (run.non_2xx, run.socket_errors, run.errors) == (11, (0, 3, 0, 2), 16)


def test_output_without_a_rate_is_refused_with_the_output() -> None:
    with pytest.raises(RuntimeError, match="cannot read wrk's output:\nunable to connect"):
        parse("unable to connect to 127.0.0.1:1 Connection refused\n")
