"""The commands after training (export, generate, passkey, plot; recall, lookahead and window_losses in their own test
files) answer bad input with one message naming the argument, exit code 2 and no traceback; checkpoints with non-finite
weights are refused as training refuses them.

Most probes call ``lighthouse.train.exits.run(main, argv)`` in-process: it is exactly what each command's
``__main__`` runs (``lighthouse.tool_args.entry_point``), minus the interpreter start. One real subprocess per
command pins that wiring.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trained_models import arch_checkpoint
from training_helpers import REPO

from lighthouse.checkpoint.io import AtomicCheckpointIO
from lighthouse.eval.passkey import main as passkey_main
from lighthouse.eval.plot import main as plot_main
from lighthouse.export import main as export_main
from lighthouse.generate import main as generate_main
from lighthouse.model.config import ModelConfig
from lighthouse.model.transformer import Transformer
from lighthouse.train import exits

TOOLS = {"export": export_main, "generate": generate_main, "passkey": passkey_main, "plot": plot_main}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A good checkpoint and the damaged, foreign and odd inputs the probes feed the commands."""
    good = arch_checkpoint(tmp_path_factory, "mha-untied")
    tmp = tmp_path_factory.mktemp("tool-inputs")
    data = good.read_bytes()
    (tmp / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp / "garbage.ckpt").write_bytes(os.urandom(4096))
    (tmp / "folder.ckpt").mkdir()
    torch.save({"weights": torch.zeros(3)}, tmp / "foreign_dict.ckpt")
    torch.save([torch.zeros(3)], tmp / "foreign_list.ckpt")
    checkpoint = torch.load(good, weights_only=True)
    torch.save({**checkpoint, "state_dict": {"encoder.w": torch.zeros(2)}}, tmp / "foreign_weights.ckpt")
    name = next(k for k in checkpoint["state_dict"] if k.endswith("wq.weight"))
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name].clone()
    checkpoint["state_dict"][name][0, 0] = float("nan")
    AtomicCheckpointIO().save_checkpoint(checkpoint, tmp / "nan.ckpt")  # with a valid sha256 beside it
    (tmp / "a_file").write_text("x")
    # Untrained weights with a context long enough for passkey prompts (only the argument checks run on it).
    config = ModelConfig(dim=32, n_layers=1, n_heads=2, ffn_hidden=64, seq_len=512)
    weights = {f"model.{k}": v for k, v in Transformer(config).state_dict().items()}
    torch.save({"state_dict": weights, "lighthouse_model": dataclasses.asdict(config)}, tmp / "ctx512.ckpt")
    (tmp / "bad_tokenizer.json").write_text("{not json")
    # Run folders for plot: an empty events file; a good run with a throughput.jsonl that is not UTF-8.
    (tmp / "empty_run").mkdir()
    (tmp / "empty_run" / "events.out.tfevents.1.host.1.0").write_bytes(b"")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp / "binary_throughput"))
    for step in range(5):
        writer.add_scalar("train/loss", 5.0 - step, step)
    writer.close()
    (tmp / "binary_throughput" / "throughput.jsonl").write_bytes(b'{"step": 1}\n\xff\xfe\x00garbage\n')
    shutil.copytree(tmp / "binary_throughput", tmp / "train_only_run")
    (tmp / "train_only_run" / "throughput.jsonl").unlink()
    return {"good": good, "tmp": tmp, "nan": tmp / "nan.ckpt"}


def argv(files: dict[str, Path], args: list[str]) -> list[str]:
    return [a.format(good=files["good"], tmp=files["tmp"]) for a in args]


EXPORT = ["--tokenizer", "byte", "--out", "{tmp}/hf"]
GENERATE = ["--ckpt", "{good}", "--tokenizer", "byte", "--device", "cpu"]
PASSKEY = ["--ckpt", "{tmp}/ctx512.ckpt", "--device", "cpu"]
PROBES = {
    # name: (tool, arguments, the flag the message must name)
    "export-missing": ("export", ["--ckpt", "{tmp}/nope.ckpt", *EXPORT], "--ckpt"),
    "export-truncated": ("export", ["--ckpt", "{tmp}/truncated.ckpt", *EXPORT], "--ckpt"),
    "export-garbage": ("export", ["--ckpt", "{tmp}/garbage.ckpt", *EXPORT], "--ckpt"),
    "export-folder": ("export", ["--ckpt", "{tmp}/folder.ckpt", *EXPORT], "--ckpt"),
    "export-foreign-dict": ("export", ["--ckpt", "{tmp}/foreign_dict.ckpt", *EXPORT], "--ckpt"),
    "export-foreign-list": ("export", ["--ckpt", "{tmp}/foreign_list.ckpt", *EXPORT], "--ckpt"),
    "export-foreign-weights": ("export", ["--ckpt", "{tmp}/foreign_weights.ckpt", *EXPORT], "--ckpt"),
    "export-nan": ("export", ["--ckpt", "{tmp}/nan.ckpt", *EXPORT], "--ckpt"),
    "export-folded-url": ("export", ["--ckpt", "http:/example.org/last.ckpt", *EXPORT], "--ckpt"),
    "export-out-file": ("export", ["--ckpt", "{good}", "--tokenizer", "byte", "--out", "{tmp}/a_file"], "--out"),
    "export-out-readonly": ("export", ["--ckpt", "{good}", "--tokenizer", "byte", "--out", "/proc"], "--out"),
    "export-out-url": ("export", ["--ckpt", "{good}", "--tokenizer", "byte", "--out", "s3:/bucket/x"], "--out"),
    "generate-temperature-negative": ("generate", [*GENERATE, "--temperature", "-1"], "--temperature"),
    "generate-temperature-nan": ("generate", [*GENERATE, "--temperature", "nan"], "--temperature"),
    "generate-top-p-0": ("generate", [*GENERATE, "--top-p", "0"], "--top-p"),
    "generate-top-k-0": ("generate", [*GENERATE, "--top-k", "0"], "--top-k"),
    "generate-max-new-0": ("generate", [*GENERATE, "--max-new-tokens", "0"], "--max-new-tokens"),
    "generate-max-new-huge": ("generate", [*GENERATE, "--max-new-tokens", "1000000000"], "--max-new-tokens"),
    "generate-device-bogus": ("generate", [*GENERATE, "--device", "warp9"], "--device"),
    "generate-tokenizer-missing": ("generate", ["--ckpt", "{good}", "--tokenizer", "{tmp}/nope.json"], "--tokenizer"),
    "generate-tokenizer-no-file": (
        "generate",
        ["--ckpt", "{good}", "--tokenizer", "{tmp}/nope.json"],
        "nope.json': no such file",
    ),
    "generate-tokenizer-bad": (
        "generate",
        ["--ckpt", "{good}", "--tokenizer", "{tmp}/bad_tokenizer.json"],
        "--tokenizer",
    ),
    "generate-nan": ("generate", ["--ckpt", "{tmp}/nan.ckpt", "--tokenizer", "byte", "--device", "cpu"], "--ckpt"),
    "passkey-lengths-0": ("passkey", [*PASSKEY, "--lengths", "0"], "--lengths"),
    "passkey-lengths-huge": ("passkey", [*PASSKEY, "--lengths", "100000000"], "--lengths"),
    "passkey-depths-2": ("passkey", [*PASSKEY, "--depths", "2"], "--depths"),
    "passkey-samples-0": ("passkey", [*PASSKEY, "--samples", "0"], "--samples"),
    "passkey-json-missing-folder": ("passkey", [*PASSKEY, "--json", "{tmp}/no/such/dir/s.json"], "--json"),
    "passkey-context-too-short": ("passkey", ["--ckpt", "{good}", "--device", "cpu"], "--ckpt"),
    "passkey-no-data-settings": ("passkey", [*PASSKEY, "--lengths", "300"], "--ckpt"),
    "plot-empty-events": ("plot", ["{tmp}/empty_run", "--out", "{tmp}/p1"], "RUN"),
    "plot-not-a-folder": ("plot", ["{tmp}/a_file"], "RUN"),
    "plot-binary-throughput": ("plot", ["{tmp}/binary_throughput", "--out", "{tmp}/p2"], "throughput.jsonl"),
    "plot-out-readonly": ("plot", ["{tmp}/train_only_run", "--out", "/proc/plots"], "--out"),
    "plot-out-file": ("plot", ["{tmp}/train_only_run", "--out", "{tmp}/a_file"], "--out"),
    "plot-out-blank": ("plot", ["{tmp}/train_only_run", "--out", ""], "--out=''"),  # an unset shell variable
}
if not torch.cuda.is_available():
    PROBES["generate-device-cuda-absent"] = ("generate", [*GENERATE, "--device", "cuda"], "--device")


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_bad_input_is_one_message_naming_the_argument(probe, files, capsys, monkeypatch):
    if probe.startswith("plot"):
        pytest.importorskip("matplotlib")
    if "readonly" in probe and not Path("/proc").is_dir():
        pytest.skip("needs /proc (a folder nobody can write into, root included)")
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    tool, args, flag = PROBES[probe]
    capsys.readouterr()
    code = exits.run(TOOLS[tool], argv(files, args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and flag in lines[0], err


def test_read_only_out_folder_is_refused_before_the_work(files, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into a chmod 555 folder (the /proc probes cover root)")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    code = exits.run(export_main, ["--ckpt", str(files["good"]), "--tokenizer", "byte", "--out", str(out / "hf")])
    assert code == 2 and "--out" in capsys.readouterr().err


def test_non_finite_weights_name_the_tensor(files, capsys):
    code = exits.run(
        export_main, ["--ckpt", str(files["nan"]), "--tokenizer", "byte", "--out", str(files["tmp"] / "x")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "wq.weight" in err and "non-finite" in err
    assert not (files["tmp"] / "x" / "model.safetensors").exists()


def test_a_run_without_validation_is_plotted_and_the_gaps_named(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code = exits.run(plot_main, [str(files["tmp"] / "train_only_run"), "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["loss.png", "loss_by_position.png", "throughput.png"]
    assert "no validation point" in captured.err and "no throughput.jsonl records" in captured.err
    assert "Traceback" not in captured.err


def test_good_arguments_still_run(files, capsys):
    """The checks refuse nothing valid: the largest continuation that fits the context is generated."""
    capsys.readouterr()
    context = 64  # arch_checkpoint's seq_len; the prompt is one EOS
    code = exits.run(
        generate_main, [*argv(files, GENERATE), "--max-new-tokens", str(context - 1), "--temperature", "0"]
    )
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "command",
    [
        ["src/export.py", "--ckpt", "{tmp}/garbage.ckpt", "--out", "{tmp}/hf2"],
        ["src/generate.py", "--ckpt", "{good}", "--top-p", "0"],
        ["-m", "lighthouse.eval.passkey", "--ckpt", "{good}", "--samples", "0"],
        ["-m", "lighthouse.eval.plot", "{tmp}/empty_run"],
    ],
    ids=["export", "generate", "passkey", "plot"],
)
@pytest.mark.slow  # a subprocess or a CLI run: `make test`, not the edit loop
def test_each_command_exits_2_without_a_traceback(command, files):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("LIGHTHOUSE_DEBUG", None)
    done = subprocess.run(
        [sys.executable, *argv(files, command)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(error_lines(done.stderr)) == 1, done.stderr


def test_a_result_that_cannot_be_written_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """tool_args.write_json, which every evaluation's JSON goes through: a full disk left a cut-off file where the
    previous result was (window_losses --out, lookahead/recall/passkey --json)."""
    import errno
    import json

    from lighthouse import tool_args

    out = tmp_path / "result.json"
    tool_args.write_json("--json", out, {"mean": 1.0})

    def full(_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(ValueError, match=r"--json='.*result.json': the result could not be written \(No space left"):
        tool_args.write_json("--json", out, {"mean": 2.0})
    assert json.loads(out.read_text()) == {"mean": 1.0} and [p.name for p in tmp_path.iterdir()] == ["result.json"]


HELPED = [
    "lighthouse.eval.window_losses",
    "lighthouse.eval.lookahead",
    "lighthouse.eval.recall",
    "lighthouse.eval.passkey",
    "lighthouse.export",
    "lighthouse.generate",
]


@pytest.mark.parametrize("module", HELPED)
def test_help_describes_the_command_in_whole_sentences(module, capsys):
    # Before: the description was the docstring's first line, and window_losses' stopped at "compared window by".
    loaded = importlib.import_module(module)
    with pytest.raises(SystemExit) as done:
        loaded.main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    first = " ".join(loaded.__doc__.split("\n\n")[0].split())
    assert first.rstrip(":.") + "." in text, text[:400]
