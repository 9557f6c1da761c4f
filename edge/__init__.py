"""The edge agent that runs on each site gateway (see DESIGN.md)."""
