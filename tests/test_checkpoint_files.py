"""Checkpoint files: checksums written with every save and checked on load, damage and unsafe pickles refused with
a clear message, ``last`` resolved to the newest checkpoint that verifies, orphaned temporary files removed."""

import hashlib
import os
import time

import pytest
import torch

from lighthouse.checkpoint.files import remove_orphans, resolve_last, sidecar, verify
from lighthouse.checkpoint.io import AtomicCheckpointIO, CheckpointError


def checkpoint(step: int, value: float = 1.0) -> dict:
    return {
        "global_step": step,
        "state_dict": {"w": torch.full((64, 64), value)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(64, 64)}}}],
    }


def save(folder, name: str, step: int, value: float = 1.0):
    path = folder / name
    AtomicCheckpointIO().save_checkpoint(checkpoint(step, value), path)
    time.sleep(0.01)  # distinct modification times, newest last
    return path


def flip_bit(path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x04
    path.write_bytes(bytes(data))


def test_save_writes_the_sha256_of_the_file_in_sha256sum_format(tmp_path):
    path = save(tmp_path, "last.ckpt", 3)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar(path).read_text() == f"{digest}  last.ckpt\n"
    assert verify(path).status == "ok"
    loaded = AtomicCheckpointIO().load_checkpoint(path)
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.ones(64, 64))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]


@pytest.mark.parametrize("damage", ["bit-flip-in-tensor-data", "truncated"])
def test_damaged_checkpoint_is_refused_on_load(tmp_path, damage):
    older = save(tmp_path, "step000002.ckpt", 2)
    path = save(tmp_path, "last.ckpt", 4)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-1000])
    else:
        flip_bit(path)
        assert torch.load(path, weights_only=True)["global_step"] == 4  # torch alone accepts it: only the sha sees it
    with pytest.raises(CheckpointError, match="last.ckpt is damaged: its sha256 is") as info:
        AtomicCheckpointIO().load_checkpoint(path)
    assert str(older) in str(info.value)  # names the newest checkpoint that is still good


def test_the_only_checkpoint_damaged_is_not_called_none_saved_yet(tmp_path):
    # Before: "Newest usable checkpoint in that folder: none saved yet", beside the damaged one it had just read.
    path = save(tmp_path, "step000050.ckpt", 50)
    flip_bit(path)
    with pytest.raises(CheckpointError) as info:
        AtomicCheckpointIO().load_checkpoint(path)
    assert str(info.value).endswith("Newest usable checkpoint in that folder: none that verifies (1 damaged there).")


def test_garbage_error_names_the_file_and_never_suggests_weights_only_false(tmp_path):
    for name, content in [
        ("garbage.ckpt", os.urandom(4096)),
        ("text.ckpt", b"not a checkpoint\n"),
        ("empty.ckpt", b""),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=f"cannot load checkpoint .*{name}: it is damaged") as info:
            AtomicCheckpointIO().load_checkpoint(tmp_path / name)
        assert "weights_only" not in str(info.value)


class RunsCode:
    """Unpickling this would run a shell command (what a malicious checkpoint does)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="could run code") as info:
        AtomicCheckpointIO().load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_explicit_weights_only_false_is_the_only_opt_out(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": RunsCode(tmp_path / "ran")}, path)
    with pytest.raises(CheckpointError):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=None)  # Lightning's default: still safe
    AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert (tmp_path / "ran").exists()


def test_non_finite_checkpoint_is_refused_on_load(tmp_path):
    path = save(tmp_path, "last.ckpt", 2, value=float("nan"))
    with pytest.raises(CheckpointError, match=r"holds non-finite values \(state_dict.w\)"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_last_resolves_to_the_newest_checkpoint_that_verifies(tmp_path, caplog):
    save(tmp_path, "step000002.ckpt", 2)
    good = save(tmp_path, "step000004.ckpt", 4)
    flip_bit(save(tmp_path, "step000006.ckpt", 6))
    flip_bit(save(tmp_path, "last.ckpt", 6))
    assert resolve_last([tmp_path]) == str(good)
    assert "skipped last.ckpt: its sha256 is" in caplog.text and "step000006.ckpt: its sha256" in caplog.text
    assert f"Resuming from {good}, the newest checkpoint that verifies" in caplog.text


def test_an_unreadable_newest_checkpoint_is_reported_as_skipped(tmp_path, caplog):
    """Before, a last.ckpt damaged where torch cannot even read its step sorted after every readable file, and
    `last` resumed the older step file without a word about it."""
    good = save(tmp_path, "step000002.ckpt", 2)
    flip_bit(save(tmp_path, "last.ckpt", 4), offset=0)  # the zip signature: no step to read
    assert resolve_last([tmp_path]) == str(good)
    assert "skipped last.ckpt: its sha256 is" in caplog.text
    assert f"Resuming from {good}, the newest checkpoint that verifies" in caplog.text
    # Without a checksum it is refused for what it is: not a checkpoint at all.
    sidecar(tmp_path / "last.ckpt").unlink()
    caplog.clear()
    assert resolve_last([tmp_path]) == str(good)
    assert "skipped last.ckpt: it does not load as a checkpoint" in caplog.text


def test_last_without_checkpoints_starts_from_scratch_and_all_damaged_is_an_error(tmp_path):
    assert resolve_last([tmp_path / "missing"]) is None
    (tmp_path / "last.ckpt.tmp-123").write_bytes(b"torn")  # a torn save is not a checkpoint
    assert resolve_last([tmp_path]) is None
    flip_bit(save(tmp_path, "last.ckpt", 2))
    with pytest.raises(ValueError, match="no checkpoint in .* verifies"):
        resolve_last([tmp_path])


def test_kill_between_the_two_renames_leaves_a_valid_unverified_file(tmp_path):
    """The old checksum goes before the new file takes its name: a checkpoint is never wrongly 'damaged'."""
    path = save(tmp_path, "last.ckpt", 2)
    sidecar(path).unlink()  # the state between "old checksum removed" and "new checksum in place"
    assert verify(path).status == "unverified"
    assert resolve_last([tmp_path]) == str(path)
    assert AtomicCheckpointIO().load_checkpoint(path)["global_step"] == 2


def test_orphaned_temporary_files_are_removed(tmp_path):
    keep = save(tmp_path, "last.ckpt", 2)
    for name in ("last.ckpt.tmp-4242", "last.ckpt.sha256.tmp-4242", "step000004.ckpt.tmp-77"):
        (tmp_path / name).write_bytes(b"\0" * 1000)
    (tmp_path / "notes.txt").write_text("not ours")
    removed = remove_orphans(tmp_path)
    assert sorted(p.name for p in removed) == [
        "last.ckpt.sha256.tmp-4242",
        "last.ckpt.tmp-4242",
        "step000004.ckpt.tmp-77",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256", "notes.txt"]
    assert verify(keep).status == "ok"


def test_removing_a_checkpoint_removes_its_checksum(tmp_path):
    path = save(tmp_path, "step000002.ckpt", 2)
    AtomicCheckpointIO().remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


def test_sharded_checkpoint_metadata_that_would_run_code_is_refused(tmp_path):
    """torch.distributed.checkpoint reads a sharded (FSDP) checkpoint's .metadata with a plain pickle.load."""
    import pickle
    import warnings

    import torch.distributed.checkpoint as dcp

    from lighthouse.checkpoint.io import check_sharded_checkpoint

    folder = tmp_path / "last.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is not initialized": a one-process save
        dcp.save({"model": {"w": torch.randn(4, 4), "b": torch.zeros(3, dtype=torch.bfloat16)}}, checkpoint_id=folder)
    check_sharded_checkpoint(folder)  # what torch writes passes
    marker = tmp_path / "code-ran"
    (folder / ".metadata").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(CheckpointError, match=r"would run code when unpickled .*posix.system"):
        check_sharded_checkpoint(folder)
    assert not marker.exists()


def test_fsdp_strategy_checks_a_checkpoint_before_lightnings_own_loader(tmp_path):
    """Lightning's FSDP loader unpickles a single-file checkpoint without weights_only."""
    from lighthouse.train.distributed import BlockFSDP

    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "payload": RunsCode(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="could run code"):
        BlockFSDP().load_checkpoint(tmp_path / "evil.ckpt")
    assert not marker.exists()


def test_last_is_looked_for_where_model_checkpoint_will_write(tmp_path):
    """No dirpath in the config (demo.yaml): the folder follows the logger's run dir, as ModelCheckpoint's does."""
    from lightning import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger

    from lighthouse.train.safety import checkpoint_folders

    logger = TensorBoardLogger(save_dir=tmp_path, name="demo", version="")
    trainer = Trainer(logger=logger, callbacks=[ModelCheckpoint()], accelerator="cpu", enable_progress_bar=False)
    assert checkpoint_folders(trainer) == [str(tmp_path / "demo" / "checkpoints")]


def test_last_goes_by_the_recorded_step_not_the_modification_time(tmp_path):
    """Before, `cp -r RUN COPY` (new modification times in copy order) made `last` resume step 8 with step 16
    beside it: a silent rollback."""
    run = tmp_path / "run"
    run.mkdir()
    for name, step in (("step000008.ckpt", 8), ("step000016.ckpt", 16), ("last.ckpt", 16)):
        save(run, name, step)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("last.ckpt", "step000016.ckpt", "step000008.ckpt"):  # newest modification time: step 8's
        for path in (run / name, sidecar(run / name)):
            (copy / path.name).write_bytes(path.read_bytes())
        time.sleep(0.01)
    assert max(copy.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns).name == "step000008.ckpt"
    assert resolve_last([copy]) == str(copy / "last.ckpt")  # ties at step 16: last.ckpt first
    # An unverified file of the same step yields to a verified one; a higher step wins whatever its age.
    sidecar(copy / "last.ckpt").unlink()
    assert resolve_last([copy]) == str(copy / "step000016.ckpt")
    newer_folder = tmp_path / "other"
    newer_folder.mkdir()
    save(newer_folder, "last.ckpt", 12)
    assert resolve_last([copy, newer_folder]) == str(copy / "step000016.ckpt")


def test_a_flipped_step_field_cannot_win(tmp_path):
    """The step is read before the checksum is checked, so a damaged file may claim any step: it is verified before
    it is chosen, and skipped."""
    good = save(tmp_path, "step000004.ckpt", 4)
    bad = save(tmp_path, "last.ckpt", 1_000_000)
    data = bytearray(bad.read_bytes())
    data[-200] ^= 0x01  # anywhere: the checksum no longer matches
    bad.write_bytes(bytes(data))
    assert resolve_last([tmp_path]) == str(good)
