#!/usr/bin/env python
"""A stand-in for SLURM's ``scontrol`` on PATH: appends its arguments to ``$SCONTROL_LOG``.

A stub, because the default suite runs without SLURM: it checks only which command the manager issues
(and that ``requeue=False`` issues none). The real requeue, by a real ``scontrol`` against a running
``slurmctld``, is tested in tests/cluster/test_slurm.py (``nox -s cluster``).
"""

import os
import sys

with open(os.environ["SCONTROL_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\n")
