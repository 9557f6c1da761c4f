"""One module per command group of the `vpp` CLI; `vpp.cli` mounts them."""
