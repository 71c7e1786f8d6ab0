"""Scaling-law experiments: plan IsoFLOP sweeps (sweep.py), run them resumably and in shards
(runner.py), and fit and plot Chinchilla's three approaches (points.py, fit.py, law.py, plots.py)."""
