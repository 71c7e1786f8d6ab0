"""Training: the optimizer (optim.py), one pure jitted step (step.py), evaluation
(evaluate.py), the loop (loop.py) and the run folder (run_dir.py)."""
