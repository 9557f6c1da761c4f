"""The `vpp` command and the harness that wires the parts together (demo, e2e, trader)."""

from protocols.version import VERSION

__version__ = VERSION
