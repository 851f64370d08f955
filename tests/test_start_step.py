"""stage.min_start_step at start-up: the start step comes from the read that resolved the checkpoint (or its metadata
alone), so a launch reads each checkpoint once before the restore; sharded (FSDP) folders have a step too."""

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lighthouse.checkpoint.files import recorded_step, resolve_last
from lighthouse.checkpoint.io import AtomicCheckpointIO
from lighthouse.train.cli import check_start_step
from lighthouse.train.stage import StageSwitch


def save(folder: Path, name: str, step: int) -> Path:
    path = folder / name
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "state_dict": {"w": torch.ones(8, 8)}}, path)
    return path


def trainer(min_start_step: int) -> SimpleNamespace:
    return SimpleNamespace(callbacks=[StageSwitch(min_start_step=min_start_step)])


@pytest.fixture
def loads(monkeypatch) -> Counter:
    """(file name, memory-mapped) -> how many times torch.load opened it."""
    counts: Counter = Counter()
    real = torch.load

    def counting(f, *args, **kwargs):
        counts[Path(f).name, bool(kwargs.get("mmap"))] += 1
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return counts


def test_resolving_last_and_the_start_step_read_each_checkpoint_once(tmp_path, loads):
    """Before, the start-step check loaded the chosen checkpoint again (and scanned its weights for NaN) after
    ``--ckpt_path last`` had already read its step."""
    save(tmp_path, "step000004.ckpt", 4)
    last = save(tmp_path, "last.ckpt", 8)
    chosen = resolve_last([tmp_path])
    assert chosen == str(last)
    check_start_step(trainer(8), chosen)
    assert loads == {("step000004.ckpt", True): 1, ("last.ckpt", True): 1}  # metadata only, tensors never touched


def test_an_explicit_checkpoint_is_read_for_its_metadata_only(tmp_path, loads):
    path = save(tmp_path, "step000004.ckpt", 4)
    with pytest.raises(ValueError, match=r"stage.min_start_step=8: .*step000004.ckpt is at step 4"):
        check_start_step(trainer(8), str(path))
    check_start_step(trainer(4), str(path))
    assert loads == {("step000004.ckpt", True): 1}


def test_a_sharded_folder_starts_at_the_step_of_its_metadata(tmp_path):
    """Before, a recovery config resuming an FSDP sharded checkpoint was refused with 'consolidate it first', although
    training resumes from sharded folders."""
    folder = tmp_path / "last.ckpt"  # what FSDP's sharded state_dict_type writes: tensors in .distcp files
    folder.mkdir()
    (folder / "__0_0.distcp").write_bytes(b"")
    torch.save({"global_step": 6, "loops": {}}, folder / "meta.pt")
    assert recorded_step(folder) == 6
    check_start_step(trainer(6), str(folder))
    with pytest.raises(ValueError, match=r"last.ckpt is at step 6"):
        check_start_step(trainer(7), str(folder))


def test_no_checkpoint_is_step_zero():
    with pytest.raises(ValueError, match="no checkpoint was found, so training would start at step 0"):
        check_start_step(trainer(1), None)
    check_start_step(trainer(0), None)
