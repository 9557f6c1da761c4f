"""What watches the whole system from outside: the devices' ground truth
(:class:`TruthRecorder`) and the telemetry as a plain subscriber sees it
(:class:`TelemetryTap`)."""

from vpp.system.tap import SeqRanges, TelemetryTap
from vpp.system.truth import TruthRecorder

__all__ = ["SeqRanges", "TelemetryTap", "TruthRecorder"]
