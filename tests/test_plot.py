"""The run reader and the plot command on a finished tiny run: what is read back, and that the PNGs are written."""

import shutil
import struct

import pytest
from training_helpers import two_stage_run

from lighthouse.eval.plot import main as plot_main
from lighthouse.eval.plot import smooth
from lighthouse.eval.run_logs import find_runs, read_run
from lighthouse.train import exits

pytest.importorskip("matplotlib")


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    return two_stage_run(tmp_path_factory.getbasetemp() / "shared_two_stage")


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_reader_gives_curves_stages_throughput_and_configs(run):
    logged = read_run(run)
    loss = logged.series("train/loss")
    assert loss.steps == list(range(1, 13)) and set(loss.launches) == {0}
    assert logged.series("val/loss").steps == [4, 8, 12]  # validation after steps 4, 8, 12
    assert logged.stage_switch_step() == 6  # dense from step 7 on
    assert logged.position_buckets() == ["0-256", "256-512"]
    times = logged.training_time(loss)
    assert times[0] == 0.0 and times == sorted(times)
    assert logged.throughput and {r["stage"] for r in logged.throughput} == {1, 2}
    assert all({"step", "time", "tokens_per_sec", "tokens_seen"} <= set(r) for r in logged.throughput)
    assert len(logged.configs) == 1 and logged.configs[0]["stage"]["switch_step"] == 6
    assert find_runs(run.parent) == [run] and find_runs(run) == [run]


def test_plot_command_writes_readable_pngs(run, tmp_path, capsys):
    plot_main([str(run.parent), "--out", str(tmp_path)])
    written = capsys.readouterr().out.split()
    names = ["loss.png", "throughput.png", "loss_by_position.png"]
    assert written == [str(tmp_path / name) for name in names]
    for name in names:
        width, height = png_size(tmp_path / name)
        assert width >= 800 and height >= 400, name


def test_several_runs_are_drawn_into_the_folder_that_holds_them(run, tmp_path, monkeypatch, capsys):
    """Not into the working directory: `python -m lighthouse.eval.plot logs/demo` after a second demo launch wrote
    ./plots wherever it was started."""
    group = tmp_path / "logs" / "demo"
    for version in ("first", "second"):
        shutil.copytree(run, group / version, ignore=shutil.ignore_patterns("*.ckpt", "plots"))
    # A validate launch of the first run's checkpoint keeps its event file inside that run: not a run of its own.
    validation = group / "first" / "validate" / "2026-12-05_00-00-00"
    validation.mkdir(parents=True)
    shutil.copy(next(run.glob("events.out.tfevents.*")), validation)
    assert find_runs(group) == [group / "first", group / "second"] and find_runs(validation) == [validation]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    plot_main([str(group)])
    assert capsys.readouterr().out.split()[0] == str(group / "plots" / "loss.png")
    assert list(elsewhere.iterdir()) == []
    plot_main([str(group / "first")])  # one run: its own folder, as before
    assert capsys.readouterr().out.split()[0] == str(group / "first" / "plots" / "loss.png")


def test_smoothing_is_debiased():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 3.0], weight=0.5) == pytest.approx([1.0, (0.25 + 0.75 * 2) / 0.75])


def test_reader_moves_event_files_of_the_old_step_convention_up_by_one(tmp_path):
    """A run resumed across the change of step convention: its first launch logged with Lightning's count (step N's
    values at N - 1, no ``steps`` note), the second with step N = after N optimizer steps; read back, both
    launches give one axis, with the validation after step 4 at 4 in both."""
    import os

    from torch.utils.tensorboard import SummaryWriter

    from lighthouse.eval.run_logs import STEPS_NOTE_TAG

    old = SummaryWriter(str(tmp_path), filename_suffix=".0")
    for step in range(4):
        old.add_scalar("train/loss", 10.0 - step, step)
    old.add_scalar("val/loss", 6.5, 3)
    old.close()
    (first,) = tmp_path.glob("events.out.tfevents.*")
    os.utime(first, (1, 1))  # an earlier launch, even when both files are named by the same second
    new = SummaryWriter(str(tmp_path), filename_suffix=".1")
    new.add_text(STEPS_NOTE_TAG, "step N = after N optimizer steps", 4)
    for step in range(5, 9):
        new.add_scalar("train/loss", 10.0 - step + 1, step)
    new.add_scalar("val/loss", 2.5, 8)
    new.close()
    logged = read_run(tmp_path)
    assert logged.series("train/loss").as_dict() == {s: 11.0 - s for s in range(1, 9)}
    assert logged.series("val/loss").as_dict() == {4: 6.5, 8: 2.5}
    assert logged.series("train/loss").launches == [0] * 4 + [1] * 4


def scalar_run(folder, *tags: str):
    """A TensorBoard folder where each of ``tags`` has a point at steps 1 to 4 (a SummaryWriter of any program)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step in range(1, 5):
        for tag in tags:
            writer.add_scalar(tag, 5.0 - step, step)
    writer.close()
    return folder


def test_a_folder_where_no_run_logged_a_loss_is_refused_and_nothing_written(tmp_path, capsys, monkeypatch):
    """A foreign TensorBoard folder gave exit 0 and three empty PNGs written into it."""
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    foreign = scalar_run(tmp_path / "foreign", "foo/bar")
    before = sorted(foreign.rglob("*"))
    assert exits.run(plot_main, [str(foreign)]) == exits.EXIT_USAGE
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line == (
        f"error: RUN=[{str(foreign)!r}] is invalid: no run there logged train/loss or val/loss (the scalars there: "
        "foo/bar), nothing to plot"
    )
    assert "Traceback" not in err and sorted(foreign.rglob("*")) == before


def test_each_run_gets_one_note_on_what_loss_png_shows_of_it(tmp_path, capsys):
    """Beside runs with a loss, a run with none is drawn as nothing, said once: it got 'no training curve' and
    'shows the training loss only' together."""
    group = tmp_path / "group"
    scalar_run(group / "foreign", "foo/bar")
    scalar_run(group / "train_only", "train/loss")
    scalar_run(group / "val_only", "val/loss")
    plot_main([str(group), "--out", str(tmp_path / "plots")])
    notes = [line for line in capsys.readouterr().err.splitlines() if "loss.png" in line]
    assert notes == [
        "note: group/foreign: no training or validation loss (train/loss, val/loss): loss.png has no curve of it",
        "note: group/train_only: no validation point (val/loss): loss.png shows the training loss only",
        "note: group/val_only: no training loss (train/loss): loss.png shows the validation loss only",
    ]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "loss.png",
        "loss_by_position.png",
        "throughput.png",
    ]


def test_an_event_file_damaged_midway_is_refused_and_a_cut_last_record_is_not(tmp_path):
    """TensorBoard's reader stops at the first record whose checksum fails and logs that at debug level only: the
    values after it would be missing without a word. A last record cut short by a kill is left out, as before."""
    folder = scalar_run(tmp_path / "run", "train/loss")
    events = next(folder.glob("events.out.tfevents.*"))
    whole, steps = events.read_bytes(), read_run(folder).series("train/loss").steps
    events.write_bytes(whole[:-5])  # the last record cut short
    assert read_run(folder).series("train/loss").steps == steps[:-1] and len(steps) == 4
    damaged = bytearray(whole)
    damaged[len(whole) // 2] ^= 0xFF
    events.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"is damaged after its record \d+: TensorBoard's reader stops there"):
        read_run(folder)
