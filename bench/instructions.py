"""Instructions per request, counted by valgrind's callgrind: ``python -m bench --instructions``.

Timings taken on a shared machine wander by several percent from one run to
the next; the number of CPU instructions a request executes does not. Each
system serves each route in a process of its own under callgrind, and the
figure is instructions per request: the same question as the timing table,
"what does the session handling cost beside the hand-written bound", with
the noise taken out. (SQLite's own speed checks count instructions the same
way.) Time spent in the kernel (system calls) is not an instruction of the
process: the paired timing run beside this table shows it.

How one figure is taken:

* the child (this module run as ``python -m bench.instructions``) builds one
  system (:mod:`bench.apps`) over a SQLite file of its own, created with the
  same one row for every system, and for each route serves warm-up requests;
* it then marks the edges of two stretches of requests, ``small`` and
  ``large`` requests long, by calling ``os.getppid()``: callgrind runs with
  ``--dump-before=getppid``, so it writes its counts out at each mark and
  starts again from zero (nothing else in these processes calls
  ``getppid``; the parent checks that the number of dumps matches);
* instructions per request is the difference of the two stretches' counts
  over the difference of their request counts, so the marks, the loop and
  anything else a stretch pays once cancel out;
* before each stretch the garbage collector runs and then freezes what is
  left (:func:`gc.freeze`): it still runs during the stretch, over the
  objects the requests made, but never over the process's whole heap,
  whose size (and so the cost of an occasional full collection) depends on
  what each system happened to import, not on its requests. Without this,
  the same code moved by up to 2% with where its objects landed in memory;
  with it, a run with a fixed ``PYTHONHASHSEED`` gives the same figures
  again, and moving the heap changes them by about 0.01%;
* one thing still moves them by up to 1.5% on a read: which names collide
  in the interpreter's type attribute cache, which any change of code or
  hash seed reshuffles. So each system runs with each hash seed of
  :data:`SEEDS` and the figure is the median; a cut of less than about 1%
  on a route with a database is not told apart from that by one run.

Every system but the OpenTelemetry variants runs in an interpreter where
``import opentelemetry`` fails, as it does without the ``otel`` extra: the
test extra installs the SDK, and with the API importable every unit of
wsgi_sqla takes the API's no-op path (about 27k instructions a request
without providers). The variants of :data:`bench.apps.OTEL_VARIANTS`
state that cost.

Each request is served as a server serves it (:func:`bench.inprocess.call`:
the environ copied, the body iterated and closed), the same code for every
system. Only callgrind's total (``Ir``) is read here; with ``--keep DIR``
the dump files are kept, and ``callgrind_annotate DIR/<system>.<n>`` shows
where a stretch's instructions went, per function.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import apps
from .inprocess import call, environ_for

__all__ = [
    "FULL",
    "QUICK",
    "ROUTES",
    "SEEDS",
    "Counted",
    "Stretches",
    "ValgrindMissing",
    "count",
    "measure",
    "rst",
    "targets",
    "valgrind_version",
]

ROOT = Path(__file__).resolve().parent.parent

#: The routes counted: no database, one read, one insert (the requests of bench.apps).
ROUTES: tuple[apps.Request, ...] = apps.REQUESTS[:3]

#: The issue's targets, per route label: wsgi_sqla over the hand-written bound at most.
TARGETS = {"no database": 1.05, "read one row": 1.03, "insert one row": 1.03}


class ValgrindMissing(RuntimeError):
    """valgrind is not installed, so no instructions can be counted."""


def valgrind_version() -> str:
    """valgrind's version; raises :class:`ValgrindMissing` when it is not on PATH."""
    if shutil.which("valgrind") is None:
        raise ValgrindMissing(
            "valgrind is not installed, so instructions cannot be counted; install it with "
            "`apt-get install valgrind` (Debian/Ubuntu) and run again"
        )
    return subprocess.run(
        ["valgrind", "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


@dataclass(frozen=True)
class Stretches:
    """How many requests: warm-up, then the two counted stretches, per route."""

    warmup: int
    small: int
    large: int


FULL = Stretches(warmup=100, small=20, large=220)
QUICK = Stretches(warmup=30, small=10, large=60)

#: Hash seeds each system runs with; the figure is the median over them (see above).
SEEDS = (1, 2, 3)


@dataclass(frozen=True)
class Counted:
    """One system on one route: the two stretches callgrind counted."""

    small: int  # requests in the short stretch
    small_ir: int  # its instructions
    large: int
    large_ir: int

    @property
    def per_request(self) -> float:
        """Instructions per request: the difference of the stretches over their request counts."""
        return (self.large_ir - self.small_ir) / (self.large - self.small)


#: What :func:`measure` returns: key ``(route label, system)``, one Counted per hash seed.
Counts = dict[tuple[str, str], list[Counted]]


# -- the child, under callgrind ---------------------------------------------------------


def _mark() -> None:
    os.getppid()  # callgrind dumps its counts here (--dump-before=getppid)


def _serve(system_name: str, url: str, stretches: Stretches) -> list[list[object]]:
    """Serve every route in two marked stretches; return ``[route, requests]`` per stretch."""
    setup = apps.make_engine(url)
    apps.reset_table(setup)
    setup.dispose()
    system = apps.build(system_name, url)
    marked: list[list[object]] = []
    for request in ROUTES:
        environ = environ_for(request)
        status = call(system.app, environ)
        if status != request.status:
            raise RuntimeError(
                f"{system_name}: {request.method} {request.path} answered {status}, "
                f"expected {request.status}; the counts would compare different work"
            )
        for _ in range(stretches.warmup):
            call(system.app, environ)
        for requests in (stretches.small, stretches.large):
            gc.collect()
            gc.freeze()
            _mark()
            for _ in range(requests):
                call(system.app, environ)
            _mark()
            marked.append([request.label, requests])
    system.engine.dispose()
    return marked


_CHILD = "import runpy; runpy.run_module('bench.instructions', run_name='__main__')"
# What an interpreter without the otel extra raises at ``import opentelemetry``.
_WITHOUT_OTEL = "import sys; sys.modules['opentelemetry'] = None; "


# -- the parent ---------------------------------------------------------------------------

_SUMMARY = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def _total(dump: Path) -> int:
    found = _SUMMARY.search(dump.read_bytes())
    if found is None:
        raise RuntimeError(f"{dump}: no summary line; is it a callgrind output file?")
    return int(found.group(1))


def count(
    system: str, stretches: Stretches, seed: int, keep: Path | None = None
) -> dict[str, Counted]:
    """Run ``system`` under callgrind with hash seed ``seed``; its :class:`Counted` per route."""
    with tempfile.TemporaryDirectory(prefix="wsgi_sqla_instr_") as tmp:
        # The same path for every system (the directory names have the same length).
        url = f"sqlite:///{tmp}/bench.sqlite3"
        out = Path(tmp) / "callgrind.out"
        otel = system in apps.OTEL_VARIANTS
        command = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=getppid",
            f"--callgrind-out-file={out}",
            "--quiet",
            sys.executable,
            "-c",
            _CHILD if otel else _WITHOUT_OTEL + _CHILD,
            system,
            url,
            str(stretches.warmup),
            str(stretches.small),
            str(stretches.large),
        ]
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{system} under callgrind exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        marked = json.loads(done.stdout.strip().splitlines()[-1])
        dumps = sorted(Path(tmp).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        if len(dumps) != 2 * len(marked):
            raise RuntimeError(
                f"{system}: callgrind wrote {len(dumps)} dumps for {len(marked)} stretches "
                "(two marks each); something else called getppid()"
            )
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for dump in dumps:
                shutil.copy(dump, keep / f"{system}.seed{seed}{dump.suffix}")
        # Dumps 2, 4, 6... (numbered from 1) end at a stretch's closing mark.
        totals = [_total(dumps[i]) for i in range(1, len(dumps), 2)]
    counted: dict[str, Counted] = {}
    for (label, requests), (next_label, next_requests), ir, next_ir in zip(
        marked[::2], marked[1::2], totals[::2], totals[1::2], strict=True
    ):
        assert label == next_label
        counted[label] = Counted(requests, ir, next_requests, next_ir)
    return counted


def measure(
    systems: Sequence[str], *, stretches: Stretches, jobs: int, keep: Path | None = None
) -> Counts:
    """Count every system on every route, once per hash seed of :data:`SEEDS`."""
    runs = [(system, seed) for system in systems for seed in SEEDS]

    def one(run: tuple[str, int]) -> dict[str, Counted]:
        print(f"[instructions] {run[0]}, hash seed {run[1]}: counting under callgrind", flush=True)
        return count(run[0], stretches, run[1], keep)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = dict(zip(runs, pool.map(one, runs), strict=True))
    return {
        (route.label, system): [results[system, seed][route.label] for seed in SEEDS]
        for route in ROUTES
        for system in systems
    }


# -- the report ---------------------------------------------------------------------------


def _per(counts: Counts, label: str, system: str) -> float:
    return statistics.median(c.per_request for c in counts[label, system])


def _ratio(counts: Counts, label: str, system: str) -> float:
    return _per(counts, label, system) / _per(counts, label, apps.LOWER_BOUND)


def targets(counts: Counts, systems: Sequence[str]) -> list[str]:
    """The issue's targets for wsgi_sqla, each marked met or missed, by how much."""
    ours = "wsgi_sqla"
    out: list[str] = []
    for route in ROUTES:
        ratio = _ratio(counts, route.label, ours)
        limit = TARGETS[route.label]
        margin = _per(counts, route.label, ours) - limit * _per(
            counts, route.label, apps.LOWER_BOUND
        )
        out.append(
            f"{'met' if ratio <= limit else 'MISSED'}: {route.label}: {ratio:.3f} of the "
            f"hand-written bound (target: at most {limit:.2f}; {margin:+,.0f} instructions "
            "from it)"
        )
    above = []
    for route in ROUTES:
        for peer in systems:
            if peer in (ours, apps.LOWER_BOUND):
                continue
            excess = _per(counts, route.label, ours) - _per(counts, route.label, peer)
            if excess > 0:
                above.append(f"{route.label}: {excess:,.0f} above {peer}")
    out.append(
        "met: at or below every peer on every route"
        if not above
        else f"MISSED: not at or below every peer ({'; '.join(above)} instructions)"
    )
    return out


def _csv(cells: Sequence[str]) -> str:
    return ", ".join(f'"{cell}"' for cell in cells)


def rst(
    counts: Counts,
    systems: Sequence[str],
    variants: Sequence[str],
    *,
    references: Sequence[str] = (),
    date: str,
    machine: Sequence[str],
    versions: Sequence[str],
    stretches: Stretches,
) -> str:
    """``bench/instructions.rst``: the table, the targets, and each feature's cost when on.

    ``references`` are the rows of :data:`bench.apps.REFERENCES`, added to the
    first table but no peer in the targets; the one there is
    :data:`bench.apps.PASS_THROUGH`, the cost of the shape alone, which the
    sentence under the table describes.
    """
    header = ["system", *(f"{route.label}: instructions" for route in ROUTES)]
    header += [f"{route.label}: vs hand-written" for route in ROUTES]
    lines = [
        ".. Written by python -m bench --instructions (bench/instructions.py); "
        "do not edit by hand.",
        "",
        f"Counted {date} by ``python -m bench --instructions`` on {'; '.join(machine)}.",
        "",
        f"Versions: {'; '.join(versions)}.",
        "",
        "Each system in its own process under callgrind, on SQLite, in process; per route "
        f"{stretches.warmup} warm-up requests, then two counted stretches of {stretches.small} "
        f"and {stretches.large} requests: instructions per request = (count of "
        f"{stretches.large} - count of {stretches.small}) / {stretches.large - stretches.small}. "
        f"The figure is the median over {len(SEEDS)} runs with different hash seeds "
        "(``PYTHONHASHSEED``), which move the interpreter's attribute caches' collisions; "
        "the ratio is to the hand-written bound on the same route.",
        "",
        ".. csv-table:: Instructions per request (SQLite, in process)",
        f"   :header: {_csv(header)}",
        "",
    ]
    for system in [*systems, *references]:
        cells = [system]
        cells += [f"{_per(counts, route.label, system):,.0f}" for route in ROUTES]
        cells += [f"{_ratio(counts, route.label, system):.3f}" for route in ROUTES]
        lines.append(f"   {_csv(cells)}")
    if references:
        lines += [
            "",
            "The last row is no system: the hand-written views inside the smallest middleware of "
            "wsgi_sqla's shape that handles no session at all (``start_response`` passed "
            "through a function of its own; a context variable set and reset around the "
            "application's call, each chunk of the body and its ``close()``; an iterable of "
            "its own handed to the server; ``bench.apps.PASS_THROUGH``). Its excess over the "
            "hand-written bound is what that shape costs by itself.",
        ]
    lines += ["", "Targets for wsgi_sqla (every optional feature off):", ""]
    lines += [f"* {target}" for target in targets(counts, systems)]
    lines.append("")
    if variants:
        header = ["wsgi_sqla with", *(f"{route.label}: instructions" for route in ROUTES)]
        header += [f"{route.label}: cost of the feature" for route in ROUTES]
        lines += [
            ".. csv-table:: What a feature costs when it is on (instructions per request, "
            "over wsgi_sqla with every feature off)",
            f"   :header: {_csv(header)}",
            "",
        ]
        for variant in variants:
            cells = [variant.removeprefix("wsgi_sqla, ")]
            cells += [f"{_per(counts, route.label, variant):,.0f}" for route in ROUTES]
            costs = (
                _per(counts, r.label, variant) - _per(counts, r.label, "wsgi_sqla") for r in ROUTES
            )
            cells += [f"{cost:+,.0f}" for cost in costs]
            lines.append(f"   {_csv(cells)}")
        lines.append("")
    return "\n".join(lines)


def _child() -> None:
    system, url, *numbers = sys.argv[1:]
    warmup, small, large = map(int, numbers)
    from wsgi_sqla._telemetry import tracing

    otel = system in apps.OTEL_VARIANTS
    if otel and tracing is None:
        raise RuntimeError(f"{system}: the OpenTelemetry API is not installed")
    if not otel and tracing is not None:
        raise RuntimeError(f"{system}: the OpenTelemetry API was imported; it must not be")
    print(json.dumps(_serve(system, url, Stretches(warmup, small, large))))


if __name__ == "__main__":
    _child()
