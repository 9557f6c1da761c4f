"""The whole system on one machine, built once for `vpp demo` and the system tests
(:mod:`vpp.system.builder`), with what watches it from outside: the devices' ground truth
(:class:`TruthRecorder`), the telemetry as a plain subscriber sees it (:class:`TelemetryTap`),
a network link that fault drills cut (:class:`NetworkGate`), and the production broker and
Redis configs a secure system runs on (:class:`SecureServices`)."""

from vpp.system.builder import T0, CloudMode, System, SystemSpec
from vpp.system.gate import NetworkGate
from vpp.system.secure import SecureServices
from vpp.system.tap import SeqRanges, TelemetryTap
from vpp.system.truth import TruthRecorder

__all__ = [
    "T0",
    "CloudMode",
    "NetworkGate",
    "SecureServices",
    "SeqRanges",
    "System",
    "SystemSpec",
    "TelemetryTap",
    "TruthRecorder",
]
