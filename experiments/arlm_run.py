"""Run ``arlm train`` as a user does, in its own process, and read the figures it prints.

Shared by bench_loop.py and time_to_quality.py, so the parsing of the loop's ``loop:`` line
(train/metrics.py ``LoopClock.report``) lives in one place.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

LOOP_LINE = re.compile(r"loop: (\d+) steps in ([\d.]+)s after a first step of ([\d.]+)s .*?: ([\d,]+) tok/s, "
                       r"of which validation ([\d.]+)s and checkpoint queuing ([\d.]+)s")


def arlm_train(options: list[str], out_dir: Path, caller: str) -> tuple[float, str]:
    """``arlm train OPTIONS`` into ``out_dir`` (no progress bar) -> (wall seconds, stdout).
    A failed run ends the calling script with its stderr's tail (``caller`` names it)."""
    arlm = shutil.which("arlm", path=str(Path(sys.executable).parent)) or "arlm"
    cmd = [arlm, "train", *options, "--train.out_dir", str(out_dir), "--train.progress", "false"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{caller}: `{' '.join(cmd)}` failed:\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def loop_figures(stdout: str, caller: str) -> dict:
    """The ``loop:`` line and the last validation bits/byte of an ``arlm train`` output."""
    m = LOOP_LINE.search(stdout)
    if m is None:
        sys.exit(f"{caller}: no 'loop:' line in the output of arlm train")
    steps, secs, first, tps, ev, ck = m.groups()
    val = re.findall(r"bits/byte ([\d.]+)", stdout)
    return {"loop_steps": int(steps), "loop_s": float(secs), "first_step_s": float(first),
            "tokens_per_s": float(tps.replace(",", "")), "validation_s": float(ev),
            "checkpoint_queuing_s": float(ck), "final_bpb": float(val[-1]) if val else None}
