"""Site control maths as pure functions: limits, dispatch following, fallback, flexibility.

No I/O here: the agent feeds one cycle's fresh measurements in and writes the plan out.
"""
