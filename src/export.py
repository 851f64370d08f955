"""Entry point: ``python src/export.py --help`` (see README.md, "After training")."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # run from a checkout without installing

from lighthouse.export import main  # noqa: E402
from lighthouse.tool_args import entry_point  # noqa: E402

if __name__ == "__main__":
    entry_point(main)  # exit 2 and one message for a bad argument (lighthouse.train.exits)
