"""`vpp demo`: the whole system on one machine on one accelerated clock (see :mod:`.run`)."""

from vpp.demo.run import DemoOptions, run_demo
from vpp.demo.scenarios import SCENARIOS

__all__ = ["SCENARIOS", "DemoOptions", "run_demo"]
