"""The `vpp` command and the harness that wires the parts together (demo, e2e, trader)."""

__version__ = "0.1.0"
