"""Read a run directory back: TensorBoard scalars with steps and wall times, notes, throughput records, configs.

``read_run(path)`` returns a ``Run``; ``find_runs(path)`` lists the run directories under a folder (``logs/demo``
holds one per launch series). Used by ``python -m lighthouse.eval.plot`` and by comparison reports; it needs only
TensorBoard's event reader and PyYAML, no torch.

Steps are read in the one convention of lighthouse.train.logger, step N = after N optimizer steps, whenever the
events were written: a launch whose event file lacks the ``steps`` note that marks it was logged by Lightning's
count, one lower (the training values of step N and the validation after it at N - 1), and its scalars move up by
one. Notes keep their step: they were always written at the global step.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lighthouse.eval.positions import bucket_start

# The folder inside a run that holds its `validate` launches (lighthouse.train.run_dir puts them there).
VALIDATIONS = "validate"

EVENTS_GLOB = "events.out.tfevents.*"
TEXT_SUFFIX = "/text_summary"  # TensorBoard stores add_text(tag) under this tag
STEPS_NOTE_TAG = "steps"  # the note that marks an event file logged with step N = after N optimizer steps


@dataclass
class Series:
    """One scalar tag: points in step order, one per step (where launches overlap, the later launch wins)."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)  # Unix seconds when the point was written
    launches: list[int] = field(default_factory=list)  # index of the launch (events file) that wrote it

    def as_dict(self) -> dict[int, float]:
        return dict(zip(self.steps, self.values, strict=True))

    def last(self) -> float:
        return self.values[-1]


@dataclass
class Run:
    """Everything a run directory records, across all its launches (first stage, resumes, recovery stage)."""

    path: Path
    scalars: dict[str, Series]
    notes: dict[str, list[tuple[int, str]]]  # tag -> [(step, markdown)]
    throughput: list[dict]  # throughput.jsonl records: step, stage, time, tokens_seen, tokens_per_sec, ...
    configs: list[dict]  # config.yaml, config.1.yaml, ...: the config of each launch, in order
    launch_spans: list[tuple[float, float]]  # (first, last) wall time of each launch's events

    @property
    def label(self) -> str:
        """``<name>/<version>`` for runs in the usual layout, else the folder name."""
        return f"{self.path.parent.name}/{self.path.name}" if self.path.parent.name else self.path.name

    def series(self, tag: str) -> Series:
        return self.scalars.get(tag, Series())

    def stage_switch_step(self) -> int | None:
        """The last step of stage 1 (``stage.switch_step``: the steps after it train densely; its validation is
        stage 1's last), or None for a single-stage run."""
        stage = self.series("train/stage")
        first = next((s for s, v in zip(stage.steps, stage.values, strict=True) if v >= 2), None)
        return None if first is None else first - 1

    def training_time(self, series: Series) -> list[float]:
        """Seconds of training at each point of ``series``, from the first point of the run, with the idle time
        between launches removed (each launch continues the clock where the previous one stopped)."""
        offsets, total = [], 0.0
        for first, last in self.launch_spans:
            offsets.append(total - first)
            total += last - first
        return [wall + offsets[launch] for wall, launch in zip(series.wall_times, series.launches, strict=True)]

    def position_buckets(self) -> list[str]:
        """The ``val/loss_pos/<range>`` ranges, ordered by position."""
        names = [tag.rsplit("/", 1)[-1] for tag in self.scalars if tag.startswith("val/loss_pos/")]
        return sorted(names, key=bucket_start)


def _launch_order(path: Path) -> tuple[int, float, str]:
    # events.out.tfevents.<unix time>.<host>.<pid>.<n>: the time orders the launches; two launches started in the
    # same second are ordered by when each last wrote (a later launch starts after the earlier one ended).
    match = re.match(r"events\.out\.tfevents\.(\d+)", path.name)
    return (int(match.group(1)) if match else 0, path.stat().st_mtime, path.name)


def _read_events(path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _check_events(path: Path) -> None:
    """Refuse an event file that TensorBoard's reader would read only in part. The reader stops at the first record
    whose checksum fails and says so only in a debug log, so every later value of the run would be missing without
    a word. Its records are counted by their length headers: a last record cut short (a kill mid-write) is left
    out, as a cut-off last line of a JSON-lines file is; anything else the reader did not yield is damage."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    data = path.read_bytes()
    framed, offset = 0, 0
    while offset + 12 <= len(data):  # record: u64 length, u32 masked crc32c of it, data, u32 masked crc32c of data
        header = data[offset : offset + 8]
        if struct.unpack("<I", data[offset + 8 : offset + 12])[0] != masked_crc32c(header):
            break  # a damaged header: the reader stops here too, and the bytes after it are lost
        end = offset + 12 + struct.unpack("<Q", header)[0] + 4
        if end > len(data):
            offset = len(data)  # the last record, cut short
            break
        framed, offset = framed + 1, end
    read = sum(1 for _ in RawEventFileLoader(str(path), detect_file_replacement=False).Load())
    if read < framed or offset < len(data) - 12:
        raise ValueError(
            f"{path} is damaged after its record {read + 1}: TensorBoard's reader stops there, so the run's later "
            "values would be missing"
        )


def _text(event) -> str:
    from tensorboard.util import tensor_util

    value = tensor_util.make_ndarray(event.tensor_proto).reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_run(path: str | Path) -> Run:
    """Read one run directory (the folder holding ``events.out.tfevents.*``)."""
    path = Path(path)
    files = sorted(path.glob(EVENTS_GLOB), key=_launch_order)
    if not files:
        raise FileNotFoundError(f"{path} holds no TensorBoard event files: not a run directory")
    points: dict[str, dict[int, tuple[float, float, int]]] = {}
    notes: dict[str, dict[int, str]] = {}
    spans = []
    for launch, events in enumerate(files):
        _check_events(events)
        accumulator = _read_events(events)
        tags = accumulator.Tags()
        shift = 0 if STEPS_NOTE_TAG + TEXT_SUFFIX in tags.get("tensors", []) else 1  # see the module docstring
        times = []
        for tag in tags.get("scalars", []):
            for event in accumulator.Scalars(tag):
                points.setdefault(tag, {})[event.step + shift] = (event.value, event.wall_time, launch)
                times.append(event.wall_time)
        for tag in tags.get("tensors", []):
            if tag.endswith(TEXT_SUFFIX):
                for event in accumulator.Tensors(tag):
                    notes.setdefault(tag[: -len(TEXT_SUFFIX)], {})[event.step] = _text(event)
        spans.append((min(times), max(times)) if times else (0.0, 0.0))
    scalars = {}
    for tag, by_step in points.items():
        series = Series()
        for step in sorted(by_step):
            value, wall, launch = by_step[step]
            series.steps.append(step)
            series.values.append(value)
            series.wall_times.append(wall)
            series.launches.append(launch)
        scalars[tag] = series
    throughput = read_json_lines(path / "throughput.jsonl")
    configs = [read_config(p) for p in launch_configs(path)]
    return Run(
        path, scalars, {tag: sorted(by_step.items()) for tag, by_step in notes.items()}, throughput, configs, spans
    )


def launch_configs(run_dir: Path) -> list[Path]:
    """The configs LightningCLI saved for a run's launches, in launch order: config.yaml, config.1.yaml, ..."""
    return sorted(run_dir.glob("config*.yaml"), key=lambda p: int(p.suffixes[0][1:]) if len(p.suffixes) > 1 else 0)


def read_config(path: Path) -> object:
    """A launch's saved config; a damaged one is refused naming it (a YAML parser's traceback names no file)."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML ({str(err).splitlines()[0]}): damaged") from None


def read_json_lines(file: Path) -> list[dict]:
    """The records of an appended JSON-lines file (``throughput.jsonl``, a campaign's ``launches.jsonl``); [] where
    it does not exist. A last line cut off by a kill mid-write is left out, any other damage is refused with the
    file and line named."""
    if not file.exists():
        return []
    try:
        lines = file.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{file} is not UTF-8 JSON lines (byte {err.start}): damaged") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the record being written when the run was killed
            raise ValueError(f"{file}:{number} is not a JSON record: the file is damaged") from None
        if not isinstance(record, dict):
            raise ValueError(f"{file}:{number} is not a JSON object: the file is damaged")
        records.append(record)
    return records


def find_runs(path: str | Path) -> list[Path]:
    """Run directories at or under ``path``: the folders holding event files, oldest first by name. The folders
    of ``validate`` launches inside a run (``<run>/validate/<start time>/``) are not runs of their own: they are
    found only when ``path`` is one of them or lies inside one."""
    path = Path(path)
    if any(path.glob(EVENTS_GLOB)):
        return [path]
    found = {events.parent for events in path.rglob(EVENTS_GLOB)}
    return sorted(run for run in found if VALIDATIONS not in run.relative_to(path).parts)
