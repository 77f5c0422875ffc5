"""The pure core of a lane: value types, screening, thermal measurement, tracking, direction, vehicles, gate actions.

No I/O, no threads, no clocks: every input carries its own time, so recorded observations replay to the same decisions.
"""
