"""Analysis: parameter and FLOP counts with accelerator peaks (flops.py), ahead-of-time memory
and FLOP plans on simulated devices (plan.py)."""
