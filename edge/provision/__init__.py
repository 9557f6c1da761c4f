"""The installer's provisioning of a gateway: find devices, configure, commission, register."""
