"""``python -m vpp``: the same command as ``vpp`` (the demo starts its cloud children so)."""

from vpp.cli import main

main()
