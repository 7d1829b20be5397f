"""Benchmarks: wsgi_sqla side by side with what its users would write instead.

The question a user asks is not "how fast is wsgi_sqla" but "what does it
cost me compared with doing it by hand, with Flask hooks, with
repoze.tm2 + zope.sqlalchemy or with Flask-SQLAlchemy". So every system
here serves the same Flask application doing the same database work, and
the systems are measured in one run, interleaved, so that whatever else
the machine is doing falls on all of them alike:

* :mod:`bench.apps` builds the six systems and the four requests;
* :mod:`bench.plain` makes ``import opentelemetry`` fail first, so that every
  system runs with wsgi_sqla's optional features off;
* :mod:`bench.inprocess` times the WSGI applications called directly and counts
  their SQL round trips with :func:`wsgi_sqla.testing.count_round_trips`;
* :mod:`bench.endtoend` measures requests per second through gunicorn;
* :mod:`bench.instructions` counts instructions per request under valgrind's
  callgrind (``python -m bench --instructions``, ``bench/instructions.rst``);
* :mod:`bench.report` writes ``bench/results.rst`` (included by docs/benchmarks.rst)
  and ``bench/results.png``;
* ``python -m bench`` (:mod:`bench.run`) runs all of it.

``bench/isolation.py`` is a separate script (``python bench/isolation.py``)
measuring the test-isolation helpers; see its docstring.

Nothing here is part of the test suite's pass/fail: timings are noisy by
nature. Only the exact round-trip counts are asserted, in
``tests/middleware/test_round_trips.py``.
"""
