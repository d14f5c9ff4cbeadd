"""The pieces of bench/gpu_check.py: the widths and timers (common), the inputs of every op (cases_*), one
op's check (opcheck), the tiny model end to end (e2e), one layer's decode step (layer) and the report."""
