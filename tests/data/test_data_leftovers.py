"""Temporary folders of shard builds that a kill interrupted are removed by the next build; a live build's stays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from datagen import build, write_corpus

from lighthouse.data.leftovers import hold_build_lock, release_build_lock

SRC = Path(__file__).resolve().parents[2] / "src"

# What a builder killed mid-tokenization leaves: its folder with some shards written, and its lock file.
KILLED_BUILDER = """
import os, signal, sys
from pathlib import Path
from lighthouse.data.leftovers import hold_build_lock
tmp = Path(sys.argv[1])
tmp.parent.mkdir(parents=True, exist_ok=True)
hold_build_lock(tmp)
tmp.mkdir(parents=True)
(tmp / "train-00000.bin").write_bytes(b"\\0" * 65536)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_build_is_cleaned_by_the_next_and_a_live_one_is_not(tmp_path):
    """Before, `.<name>.tmp-<pid>-<id>` folders of killed builds stayed in data/shards for good."""
    corpus = write_corpus(tmp_path / "c", [30, 50, 20, 40])
    shards = tmp_path / "data" / "shards"
    killed = shards / ".c-byte-0123.tmp-4242-deadbeef"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    subprocess.run([sys.executable, "-c", KILLED_BUILDER, str(killed)], env=env, timeout=120, check=False)
    assert (killed / "train-00000.bin").exists()
    aside = shards / ".c-byte-0123.damaged-4242-0badf00d"  # a kill while deleting a damaged folder
    aside.mkdir()
    live = shards / ".c-byte-0123.tmp-77-cafef00d"  # another build, still running
    lock = hold_build_lock(live)
    live.mkdir()
    try:
        p = build(corpus, tmp_path / "data")
        assert sorted(q.name for q in shards.iterdir()) == sorted(
            [
                p.folder.name,
                live.name,
                f"{live.name}.lock",
                *(["tokenizers"] if (shards / "tokenizers").exists() else []),
            ]
        )
    finally:
        release_build_lock(live, lock)
