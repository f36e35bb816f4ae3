#!/usr/bin/env python
"""A stand-in for SLURM's ``scontrol`` on PATH: appends its arguments to ``$SCONTROL_LOG``."""

import os
import sys

with open(os.environ["SCONTROL_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\n")
