"""An example gaal method plugin; the method lives in `late_sum` (see the package README)."""
