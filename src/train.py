"""Entry point: ``python src/train.py fit --config configs/demo.yaml`` (see README.md)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from a checkout without installing

from lighthouse.train.cli import run  # noqa: E402

if __name__ == "__main__":
    sys.exit(run())
