"""The agent process on the operator port (:mod:`protocols.operator`): what "ready" means,
and the agents' metrics, read from their own state at scrape time.

Ready (``agent.polls``): every device of every agent gave a good reading within its
``stale_after_polls`` cycles. A broker that is away does not make an agent unready: it keeps
controlling the site and buffers its telemetry (``vpp_edge_mqtt_connected`` shows it).

A process may run many agents (the demo, a bench); the metrics sum over them, labelled by
device kind, mode or reason, never by site.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from protocols.messages import DeviceKind, Mode
from protocols.operator import CheckResult, FnCollector, OperatorServer, counter, gauge

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from edge.agent import SiteAgent

__all__ = ["watch_agents"]

_MAX_PROBLEMS = 5  # the readiness body names this many, then counts the rest


def _polls_problems(agent: SiteAgent) -> list[str]:
    if not agent.drivers:
        return [f"site {agent.site_id}: not started (devices or store unreachable?)"]
    now = agent.clock.time()
    limit = agent.poll_s * agent.config.agent.stale_after_polls
    problems = []
    for d in agent.drivers:
        where = f"site {agent.site_id} device {d.device_id}"
        if d.last is None:
            problems.append(f"{where}: never read")
        elif now - d.last.ts > limit:
            problems.append(f"{where}: last read {now - d.last.ts:.1f} s ago (limit {limit:g} s)")
    return problems


def watch_agents(op: OperatorServer, agents: Sequence[SiteAgent]) -> None:
    """The agents' readiness check and metrics on ``op``."""

    def polls_check() -> CheckResult:
        problems = [p for a in agents for p in _polls_problems(a)]
        if problems:
            more = len(problems) - _MAX_PROBLEMS
            tail = f" (and {more} more)" if more > 0 else ""
            return CheckResult(False, "; ".join(problems[:_MAX_PROBLEMS]) + tail)
        devices = sum(len(a.drivers) for a in agents)
        return CheckResult(True, f"{len(agents)} site(s), {devices} devices read in time")

    op.ready.add("agent.polls", polls_check)

    def collect() -> Iterator[Metric]:
        reads: Counter[tuple[str, ...]] = Counter()
        errors: Counter[tuple[str, ...]] = Counter()
        writes: Counter[tuple[str, ...]] = Counter()
        write_errors: Counter[tuple[str, ...]] = Counter()
        for kind in DeviceKind:  # every kind present, at 0 when there is none
            reads[(kind.value,)] += 0
        modes: Counter[tuple[str, ...]] = Counter({(m.value,): 0 for m in Mode})
        sent: Counter[tuple[str, ...]] = Counter({("live",): 0, ("backlog",): 0})
        why: Counter[tuple[str, ...]] = Counter({("interval",): 0})
        pending = dropped = connected = cycles = cycle_errors = held_back = unchanged = 0
        auth_failures: Counter[tuple[str, ...]] = Counter({("wrong",): 0, ("limited",): 0})
        for a in agents:
            for d in a.drivers:
                kind, st = d.kind.value, d.stats
                reads[(kind,)] += st.reads_ok + st.reads_failed + st.bad_values
                errors[(kind, "link")] += st.reads_failed
                errors[(kind, "bad_values")] += st.bad_values
                writes[(kind,)] += st.writes
                write_errors[(kind, "link")] += st.writes_failed
                write_errors[(kind, "verify")] += st.write_verify_failed
            if a.state is not None:
                modes[(a.state.mode.value,)] += 1
            if a.store is not None:
                outbox = a.store.stats()
                pending += outbox.pending
                dropped += outbox.dropped_total
            if a.uplink is not None:
                up = a.uplink.stats
                sent[("live",)] += up["live_sent"]
                sent[("backlog",)] += up["backlog_sent"]
                connected += bool(up["connected"])
            cycles += a.counters["cycles"]
            cycle_errors += a.counters["errors"]
            held_back += a.counters["telemetry_held_back"]
            unchanged += a.counters["telemetry_unchanged"]
            for reason, n in a.telemetry_reasons.items():
                why[(reason,)] += n
            auth_failures[("wrong",)] += a.counters.get("installer_auth_failures", 0)
            auth_failures[("limited",)] += a.counters.get("installer_auth_limited", 0)
        yield gauge("vpp_edge_sites", "Site agents in this process.", len(agents))
        yield counter(
            "vpp_edge_modbus_reads_total",
            "Modbus polls of a device that reached it (good or not), by device kind.",
            reads,
            ["kind"],
        )
        yield counter(
            "vpp_edge_modbus_errors_total",
            "Failed polls by device kind and reason (link: timeout or drop; bad_values).",
            errors,
            ["kind", "reason"],
        )
        yield counter(
            "vpp_edge_modbus_writes_total", "Control writes sent, by device kind.", writes, ["kind"]
        )
        yield counter(
            "vpp_edge_modbus_write_errors_total",
            "Control writes that failed, by device kind and reason (link; verify: read back "
            "otherwise).",
            write_errors,
            ["kind", "reason"],
        )
        yield gauge(
            "vpp_edge_control_mode",
            "Sites whose control follows this mode (cloud, fallback, degraded, local_autonomy).",
            modes,
            ["mode"],
        )
        yield gauge("vpp_edge_outbox_pending", "Telemetry records not yet acknowledged.", pending)
        yield counter(
            "vpp_edge_outbox_dropped_total", "Telemetry records dropped by retention.", dropped
        )
        yield counter(
            "vpp_edge_telemetry_sent_total",
            "Telemetry messages published, live or from the backlog.",
            sent,
            ["queue"],
        )
        yield counter(
            "vpp_edge_telemetry_held_back_total",
            "Telemetry not sent for want of a grid reading (the meter lost).",
            held_back,
        )
        yield counter(
            "vpp_edge_telemetry_built_total",
            "Telemetry messages stored for sending, by why (interval: every one; by exception: "
            "first, heartbeat, slot, mode, command, plan, health, grid, battery, pv, load, "
            "heat_pump, baseline, flex, soc, energy).",
            why,
            ["reason"],
        )
        yield counter(
            "vpp_edge_telemetry_unchanged_total",
            "Telemetry intervals not sent by exception: nothing moved beyond the deadband.",
            unchanged,
        )
        yield gauge("vpp_edge_mqtt_connected", "Site agents connected to the broker.", connected)
        yield counter("vpp_edge_cycles_total", "Control cycles run.", cycles)
        yield counter("vpp_edge_cycle_errors_total", "Control cycles that failed.", cycle_errors)
        yield counter(
            "vpp_edge_installer_auth_failures_total",
            "Installer actions on the status page refused: a wrong password, or a client "
            "refused while locked out after too many (limited).",
            auth_failures,
            ["reason"],
        )

    op.registry.register(FnCollector(collect))
