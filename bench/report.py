"""The results: a table per database, the targets checked, and a plot.

:func:`rst` writes ``bench/results.rst``, which docs/benchmarks.rst includes
(``.. include::``): the one results file, so the page always shows one run.

Everything written here is computed from the measurements of the run that
writes it; the targets are checked against those same figures, so a missed
target shows up as missed, by how much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .apps import LOWER_BOUND, REQUESTS
from .endtoend import EndToEnd
from .inprocess import Timing

__all__ = ["DatabaseResults", "Run", "plot", "rst", "targets"]

TRIPS = ("statements", "begin", "commit", "rollback", "checkouts", "resets")


@dataclass
class DatabaseResults:
    """Everything measured on one database; keys are ``(request label, system)``."""

    name: str
    server: str
    timings: dict[tuple[str, str], Timing]
    trips: dict[tuple[str, str], dict[str, float]]
    end_to_end: dict[tuple[str, str], EndToEnd] | None

    def ratio(self, label: str, system: str) -> float:
        """In-process cost of ``system`` over the lower bound's on ``label`` (paired by round)."""
        return self.timings[label, system].ratio_to(self.timings[label, LOWER_BOUND])


@dataclass
class Run:
    """One run of the benchmark: how it was taken and what it found."""

    date: str
    mode: str
    machine: list[str]
    versions: list[str]
    method: list[str]
    systems: Sequence[str]
    databases: list[DatabaseResults] = field(default_factory=list)
    overhead: dict[str, Timing] | None = None
    notes: list[str] = field(default_factory=list)


def _count(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def targets(db: DatabaseResults, systems: Sequence[str]) -> list[str]:
    """The issue's targets for wsgi_sqla on ``db``, each marked met or missed, by how much."""
    out: list[str] = []
    ours = "wsgi_sqla"
    for label in ("read one row", "insert one row"):
        ratio = db.ratio(label, ours)
        verdict = "met" if ratio <= 1.05 else "MISSED"
        out.append(
            f"{verdict}: {label}: median {100 * (ratio - 1):+.1f}% of the lower bound "
            "(target: within 5%)"
        )
    nodb = "no database"
    extra = db.timings[nodb, ours].excess_over_us(db.timings[nodb, LOWER_BOUND])
    out.append(
        f"{'met' if extra <= 5 else 'MISSED'}: {nodb}: {extra:+.1f} µs over the lower bound "
        "(target: a few µs, taken as at most 5)"
    )
    for rival in ("repoze.tm2", "flask-hooks"):
        if rival not in systems:
            continue
        slower = [
            f"{r.label} ({ratio - 1:+.1%})"
            for r in REQUESTS
            if (ratio := db.timings[r.label, ours].ratio_to(db.timings[r.label, rival])) >= 1
        ]
        out.append(
            f"met: below {rival} on every request"
            if not slower
            else f"MISSED: not below {rival} on: {', '.join(slower)}"
        )
    nodb_trips = db.trips[nodb, ours]
    out.append(
        f"{'met' if not any(nodb_trips.values()) else 'MISSED'}: {nodb}: "
        f"{_count(nodb_trips['checkouts'])} checkouts, "
        f"{_count(nodb_trips['statements'])} statements (target: 0 and 0)"
    )
    beyond = [
        r.label
        for r in REQUESTS
        if db.trips[r.label, ours]["statements"] > db.trips[r.label, LOWER_BOUND]["statements"]
    ]
    out.append(
        "met: no statement beyond the lower bound on any request"
        if not beyond
        else f"MISSED: more statements than the lower bound on: {', '.join(beyond)}"
    )
    if db.end_to_end is not None:
        ratios = {
            r.label: db.end_to_end[r.label, ours].ratio_to(db.end_to_end[r.label, LOWER_BOUND])
            for r in REQUESTS
        }
        out.append(
            "end to end, req/s over the lower bound's: "
            + ", ".join(f"{label} {ratio:.3f}" for label, ratio in ratios.items())
            + " (target: within the noise; see the rounds' spread)"
        )
    return out


def _csv(cells: Sequence[str]) -> str:
    return ", ".join(f'"{cell}"' for cell in cells)


def rst(run: Run) -> str:
    """The whole results file, ``bench/results.rst``, as reStructuredText."""
    quick = " --quick" if run.mode == "quick" else ""
    lines = [
        ".. Written by python -m bench (bench/report.py); do not edit by hand.",
        "",
        f"Measured {run.date} by ``python -m bench{quick}`` ({run.mode} mode) on "
        f"{'; '.join(run.machine)}.",
        "",
        f"Versions: {'; '.join(run.versions)}.",
        "",
        "How these figures were taken:",
        "",
        *(f"* {line}" for line in run.method),
        "",
    ]
    if run.overhead is not None:
        bare, wrapped = run.overhead.values()
        lines += [
            "``SessionMiddleware`` alone, around a bare WSGI app that never touches the "
            f"database: {_median_iqr(bare)} bare, {_median_iqr(wrapped)} wrapped, so it "
            f"adds {wrapped.excess_over_us(bare):.2f} µs.",
            "",
        ]
    for db in run.databases:
        e2e = db.end_to_end
        header = ["request", "system", "median µs", "IQR µs", "vs lower bound", "stmts"]
        header += ["BEGIN", "COMMIT", "ROLLBACK", "checkouts", "pool resets"]
        if e2e is not None:
            header += ["req/s (gunicorn)", "rounds' range", "req/s vs lower bound"]
        lines += [f".. csv-table:: {db.name} ({db.server})", f"   :header: {_csv(header)}", ""]
        for request in REQUESTS:
            for system in run.systems:
                timing = db.timings[request.label, system]
                q1, q3 = timing.quartiles_us
                trips = db.trips[request.label, system]
                row = [
                    request.label,
                    system,
                    f"{timing.median_us:.1f}",
                    f"{q1:.1f}-{q3:.1f}",
                    f"{db.ratio(request.label, system):.3f}",
                    *(_count(trips[k]) for k in TRIPS),
                ]
                if e2e is not None:
                    point = e2e[request.label, system]
                    row += [
                        f"{point.median:.0f}",
                        f"{min(point.rates):.0f}-{max(point.rates):.0f}",
                        f"{point.ratio_to(e2e[request.label, LOWER_BOUND]):.3f}",
                    ]
                lines.append(f"   {_csv(row)}")
        lines += ["", f"Targets for wsgi_sqla on {db.name}:", ""]
        lines += [f"* {target}" for target in targets(db, run.systems)]
        lines.append("")
    if run.notes:
        lines += ["Notes:", "", *(f"* {note}" for note in run.notes), ""]
    return "\n".join(lines)


def _median_iqr(timing: Timing) -> str:
    q1, q3 = timing.quartiles_us
    return f"{timing.median_us:.2f} µs (IQR {q1:.2f}-{q3:.2f})"


def plot(run: Run, path: Path) -> None:
    """Bar charts: in-process median (with quartiles) and end-to-end req/s, per database."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_e2e = any(db.end_to_end is not None for db in run.databases)
    rows = 2 if with_e2e else 1
    columns = len(run.databases)
    figure, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 4.2 * rows), squeeze=False)
    labels = [r.label for r in REQUESTS]
    width = 0.8 / len(run.systems)
    for column, db in enumerate(run.databases):
        top = axes[0][column]
        for index, system in enumerate(run.systems):
            xs = [i + (index - (len(run.systems) - 1) / 2) * width for i in range(len(labels))]
            medians = [db.timings[label, system].median_us for label in labels]
            quartiles = [db.timings[label, system].quartiles_us for label in labels]
            errors = [
                [m - q[0] for m, q in zip(medians, quartiles, strict=True)],
                [q[1] - m for m, q in zip(medians, quartiles, strict=True)],
            ]
            top.bar(xs, medians, width, yerr=errors, capsize=2, label=system)
            if with_e2e and db.end_to_end is not None:
                rates = [db.end_to_end[label, system].median for label in labels]
                axes[1][column].bar(xs, rates, width, label=system)
        top.set_title(f"{db.name}: in process (median, quartiles)")
        top.set_ylabel("µs per request")
        top.set_xticks(range(len(labels)), labels, fontsize=8)
        if with_e2e:
            bottom = axes[1][column]
            bottom.set_title(f"{db.name}: gunicorn + wrk")
            bottom.set_ylabel("requests per second")
            bottom.set_xticks(range(len(labels)), labels, fontsize=8)
    axes[0][0].legend(fontsize=8)
    figure.suptitle(f"wsgi_sqla benchmark, {run.date} ({run.mode} mode)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
