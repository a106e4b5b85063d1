"""Imported first by every script: puts the library (src/) on sys.path, so jobs also work under --use-conda or SLURM
where the package is not installed into the environment. (Snakemake adds this directory to sys.path.)"""

import sys
from pathlib import Path

_SRC = str(Path(__file__).resolve().parents[1] / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)
