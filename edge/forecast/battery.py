"""What the forecast knows of the battery: its rating and where its BMS tapers.

A BMS cuts the charge power as the cells fill and the discharge power as they empty (the
simulator's from 90 % to 0 at 100 %, and from 8 % to 0 at 0 %). The agent sees it two ways:
a battery that reports its present limits reports them lower there, and one that does not
delivers less than it was told. :class:`BatteryLearner` takes both as evidence and, for a
linear taper to zero at full (empty), estimates the SoC where it starts:
``start = 100 - (100 - soc) * rated / limit`` (``start = soc * rated / limit``). The median
of the recent estimates is used (a ramp or a measurement lag gives an odd low one).

The forecast keeps its guaranteed energy window inside the untapered range, so an absorb or
deliver bound can always be taken at full power.
"""

from __future__ import annotations

from collections import deque

__all__ = [
    "DEFAULT_CHARGE_TAPER_PCT",
    "DEFAULT_DISCHARGE_TAPER_PCT",
    "BatteryLearner",
    "taper_limits",
]

DEFAULT_CHARGE_TAPER_PCT = 90.0
DEFAULT_DISCHARGE_TAPER_PCT = 8.0
MIN_TAPER_FRACTION = 0.02  # the last percent still fills / empties in finite time
_EVIDENCE = 25  # estimates kept per direction
_EVIDENCE_ABOVE_PCT = 75.0  # charge-taper evidence is taken above this SoC only
_EVIDENCE_BELOW_PCT = 25.0  # discharge-taper evidence below this SoC only
_CLEAR_SHORTFALL = 0.15  # delivered below this fraction of what was asked: a limit held it


def taper_limits(
    soc_pct: float,
    rated_charge_w: float,
    rated_discharge_w: float,
    charge_taper_pct: float,
    discharge_taper_pct: float,
) -> tuple[float, float]:
    """(charge, discharge) limits (W >= 0) at ``soc_pct`` with linear tapers."""
    if soc_pct >= 99.99:
        charge = 0.0
    else:
        f = (100.0 - soc_pct) / max(1e-6, 100.0 - charge_taper_pct)
        charge = rated_charge_w * min(1.0, max(MIN_TAPER_FRACTION, f))
    if soc_pct <= 0.01:
        discharge = 0.0
    else:
        f = soc_pct / max(1e-6, discharge_taper_pct)
        discharge = rated_discharge_w * min(1.0, max(MIN_TAPER_FRACTION, f))
    return charge, discharge


class BatteryLearner:
    """Learns the rating and the taper starts from each cycle's battery data (O(1) a call)."""

    def __init__(
        self,
        charge_taper_pct: float = DEFAULT_CHARGE_TAPER_PCT,
        discharge_taper_pct: float = DEFAULT_DISCHARGE_TAPER_PCT,
    ) -> None:
        self.rated_charge_w = 0.0
        self.rated_discharge_w = 0.0
        self._default = (charge_taper_pct, discharge_taper_pct)
        self._charge: deque[float] = deque(maxlen=_EVIDENCE)
        self._discharge: deque[float] = deque(maxlen=_EVIDENCE)
        self._asked_w: float | None = None  # the setpoint of the previous cycle
        self.changed = False  # new evidence since the last snapshot

    def observe(
        self,
        soc_pct: float | None,
        power_w: float | None,
        max_charge_w: float | None,
        max_discharge_w: float | None,
        setpoint_w: float | None,
    ) -> None:
        """One cycle: SoC, measured power (+ discharge), reported limits, and the setpoint
        commanded this cycle (compared with the power measured next cycle)."""
        asked, self._asked_w = self._asked_w, setpoint_w
        if soc_pct is None:
            return
        if max_charge_w is not None and max_charge_w > self.rated_charge_w:
            self.rated_charge_w = max_charge_w
        if max_discharge_w is not None and max_discharge_w > self.rated_discharge_w:
            self.rated_discharge_w = max_discharge_w
        rc, rd = self.rated_charge_w, self.rated_discharge_w
        # a reported limit below the rating
        high, low = soc_pct > _EVIDENCE_ABOVE_PCT, soc_pct < _EVIDENCE_BELOW_PCT
        if high and max_charge_w is not None and 0 < max_charge_w < 0.97 * rc:
            self._add(self._charge, 100.0 - (100.0 - soc_pct) * rc / max_charge_w)
        if low and max_discharge_w is not None and 0 < max_discharge_w < 0.97 * rd:
            self._add(self._discharge, soc_pct * rd / max_discharge_w)
        # or delivered clearly less than asked
        if asked is None or power_w is None or asked != asked:  # NaN: released
            return
        if high and asked < 0 and rc > 0:
            got = -power_w
            if 0 < got < (1 - _CLEAR_SHORTFALL) * min(-asked, rc) - 50.0:
                self._add(self._charge, 100.0 - (100.0 - soc_pct) * rc / got)
        elif low and asked > 0 and rd > 0:
            got = power_w
            if 0 < got < (1 - _CLEAR_SHORTFALL) * min(asked, rd) - 50.0:
                self._add(self._discharge, soc_pct * rd / got)

    def _add(self, evidence: deque[float], estimate: float) -> None:
        if 0.0 < estimate < 100.0:
            evidence.append(estimate)
            self.changed = True

    @staticmethod
    def _median(values: deque[float], default: float) -> float:
        if len(values) < 3:
            return default
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    @property
    def charge_taper_pct(self) -> float:
        return self._median(self._charge, self._default[0])

    @property
    def discharge_taper_pct(self) -> float:
        return self._median(self._discharge, self._default[1])

    def snapshot(self) -> dict[str, object]:
        """What is worth keeping across a restart (JSON-able)."""
        self.changed = False
        return {
            "rated_charge_w": self.rated_charge_w,
            "rated_discharge_w": self.rated_discharge_w,
            "charge": list(self._charge),
            "discharge": list(self._discharge),
        }

    def load(self, data: object) -> None:
        """Take a :meth:`snapshot` back (anything malformed is ignored)."""
        if not isinstance(data, dict):
            return
        try:
            rated_c = float(data["rated_charge_w"])
            rated_d = float(data["rated_discharge_w"])
            charge = [float(v) for v in data["charge"]]
            discharge = [float(v) for v in data["discharge"]]
        except (KeyError, TypeError, ValueError):
            return
        self.rated_charge_w = max(self.rated_charge_w, rated_c)
        self.rated_discharge_w = max(self.rated_discharge_w, rated_d)
        self._charge.extend(v for v in charge if 0.0 < v < 100.0)
        self._discharge.extend(v for v in discharge if 0.0 < v < 100.0)
