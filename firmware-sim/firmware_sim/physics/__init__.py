"""Site physics: sun, household load, battery cell + BMS, house and heat pump.

Everything here is pure and vectorised with numpy over the sites of a fleet: functions take
arrays (or scalars) and a time step, and return new state. Randomness comes only from
counter-based generators keyed by (seed, time slot), so the same seed and start time give
the same run, whatever the tick rate of the caller.
"""
