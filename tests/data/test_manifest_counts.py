"""A manifest whose counts disagree with its files (10^12 tokens claimed) is refused before anything is sized
from it: numpy would otherwise allocate for the claimed tokens (14.6 GiB were seen)."""

from __future__ import annotations

import json

import pytest
from datagen import build

from lighthouse.data.shards import MANIFEST, DamagedShards, open_split, verify


@pytest.mark.parametrize(
    "lie",
    [
        lambda m: m["splits"]["train"].update(tokens=10**12),
        lambda m: m["splits"]["train"]["shards"][0].update(tokens=10**12),
        lambda m: m["splits"]["val"].update(documents=10**12),
        lambda m: m["splits"]["train"].pop("shards"),
    ],
    ids=["split-tokens", "shard-tokens", "documents", "malformed"],
)
def test_counts_beyond_the_files_are_refused(lie, corpus_dir, tmp_path):
    p = build(corpus_dir, tmp_path / "data")
    manifest = json.loads((p.folder / MANIFEST).read_text())
    lie(manifest)
    (p.folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DamagedShards, match="manifest"):
        open_split(p.folder, "train", p.tokenizer)
    assert verify(p.folder, manifest)  # prepare_data's check finds it too, and rebuilds the folder
