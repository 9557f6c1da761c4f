"""The pool dispatcher's control core: the closed loop and the split across units (no I/O)."""

from cloud.dispatch.allocation import DEFAULT_HORIZON_S, Allocation, allocate, water_fill
from cloud.dispatch.controller import (
    ControllerConfig,
    ControllerState,
    Saturation,
    StepResult,
    step,
)

__all__ = [
    "DEFAULT_HORIZON_S",
    "Allocation",
    "ControllerConfig",
    "ControllerState",
    "Saturation",
    "StepResult",
    "allocate",
    "step",
    "water_fill",
]
