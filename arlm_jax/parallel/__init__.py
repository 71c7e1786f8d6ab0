"""Parallelism: the device mesh (mesh.py), the logical-axis rule table (rules.py), shardings of
parameters, states and batches (shardings.py), host batches (hosts.py), multi-process runs
(distributed.py)."""
