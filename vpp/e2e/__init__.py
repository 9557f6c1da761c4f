"""The end-to-end run's record, KPIs, alert rules and HTML report.

The demo feeds a :class:`RunRecorder` and writes its folder; everything after that works
from the folder alone: :func:`load` it, :func:`compute_kpis`, :func:`evaluate` the alert
rules, :func:`write_report`. File formats, and what the demo must record:
:mod:`vpp.e2e.records`; KPI meanings: :data:`KPI_DOCS`; how every interval is judged
(delivered, or short by ``outage``, ``outside_envelope`` or ``promise_broken``):
:func:`score_intervals` and :mod:`vpp.e2e.kpis`.
"""

from vpp.e2e.alerts import (
    DEFAULT_REGRESSION_RULES,
    DEFAULT_RULES,
    Alert,
    AlertRule,
    RegressionRule,
    RegressionWatch,
    WatchUpdate,
    evaluate,
    failing,
    kpi_samples,
    payload_of,
    regression_payload,
)
from vpp.e2e.kpis import KPI_DOCS, IntervalScores, compute_kpis, score_intervals
from vpp.e2e.records import RunRecord, RunRecorder, load
from vpp.e2e.report import RunAnalysis, analyse_run, write_report

__all__ = [
    "DEFAULT_REGRESSION_RULES",
    "DEFAULT_RULES",
    "KPI_DOCS",
    "Alert",
    "AlertRule",
    "IntervalScores",
    "RegressionRule",
    "RegressionWatch",
    "RunAnalysis",
    "RunRecord",
    "RunRecorder",
    "WatchUpdate",
    "analyse_run",
    "compute_kpis",
    "evaluate",
    "failing",
    "kpi_samples",
    "load",
    "payload_of",
    "regression_payload",
    "score_intervals",
    "write_report",
]
