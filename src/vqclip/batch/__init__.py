"""`vqclip batch`: queues and sweeps of runs that survive crashes (rows, journal, workers, Ray, contact sheet)."""
