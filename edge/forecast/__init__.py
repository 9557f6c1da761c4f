"""The site's 24-h forecast and flexibility envelope, computed at the edge.

The agent feeds a :class:`Forecaster` every control cycle (``observe``) and asks it for a
:class:`~protocols.messages.FlexEnvelope` at every quarter-hour boundary (``envelope``);
see :mod:`edge.forecast.forecaster` for exactly what to pass.

Modules: :mod:`.history` (the quarter-hour memory, persisted in the agent's SQLite),
:mod:`.pv` (clear sky scaled by the site's own production), :mod:`.load` (by time of day,
with a household prior), :mod:`.heat` (outdoor temperature, the house's offset),
:mod:`.battery` (rating and BMS taper), :mod:`.baseline` (the agent's fallback policy
simulated over the horizon), :mod:`.errors` (the forecast's own errors, per lead time),
:mod:`.envelope` (the message from the simulated paths), :mod:`.forecaster` (all of it).
Pure maths and in-memory state; the only I/O is through :mod:`edge.store`.
"""

from edge.forecast.forecaster import (
    Forecaster,
    ForecastResult,
    ForecastSettings,
    HeatPumpNow,
    SiteNow,
)

__all__ = ["ForecastResult", "ForecastSettings", "Forecaster", "HeatPumpNow", "SiteNow"]
