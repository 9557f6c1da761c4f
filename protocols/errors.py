"""Typed protocol errors: every rejected input says why, in words a person can act on.

Receivers count rejections per :class:`Reason` (a small fixed set, safe as a metric label)
and log the message; they never let a bad message crash a process or enter state.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ProtocolError", "Reason"]


class Reason(StrEnum):
    """Why a message or topic was rejected. Stable names: they are metric labels."""

    NOT_JSON = "not_json"
    TOO_LARGE = "too_large"
    NOT_AN_OBJECT = "not_an_object"
    UNKNOWN_SCHEMA = "unknown_schema"
    UNKNOWN_VERSION = "unknown_version"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    INVALID_VALUE = "invalid_value"
    SITE_MISMATCH = "site_mismatch"
    PARTITION_MISMATCH = "partition_mismatch"
    BAD_TOPIC = "bad_topic"
    WRONG_TOPIC_KIND = "wrong_topic_kind"
    MIS_DATED = "mis_dated"  # a time that cannot be right now (an envelope from long ago)


class ProtocolError(ValueError):
    """A message, topic or field that breaks the contract.

    ``reason`` is the machine-readable class; ``field`` the dotted path of the offending
    field when there is one; ``str(error)`` the sentence for the log.
    """

    def __init__(self, reason: Reason, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field

    def __repr__(self) -> str:
        return f"ProtocolError({self.reason.value!r}, {str(self)!r}, field={self.field!r})"
