"""Simulated devices that are real Modbus TCP servers, with physics and fault injection.

Knows nothing of edge or cloud; uses only :mod:`protocols`."""
