"""Export to the Hugging Face Llama layout: transformers loads it and computes this project's logits and tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file
from trained_models import ARCH_CASES, arch_checkpoint, two_stage_checkpoints
from training_helpers import REPO

from lighthouse.checkpoint.read import NotRecoveredWarning, dense_model, read_checkpoint
from lighthouse.data.tokenizer import EOS_TOKEN, byte_tokenizer, bytes_to_unicode, train_bpe
from lighthouse.export import export_llama, llama_state_dict, main, tokenizer_files
from lighthouse.generate import generate_tokens
from lighthouse.hf_import import read_safetensors
from lighthouse.train import exits

transformers = pytest.importorskip("transformers")


def load_hf(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def prompt_batch(vocab: int, n: int = 48) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (2, n), generator=generator)


@pytest.fixture(params=sorted(ARCH_CASES))
def exported(request, tmp_path_factory, tmp_path):
    ckpt = arch_checkpoint(tmp_path_factory, request.param)
    return request.param, ckpt, export_llama(ckpt, tmp_path / "hf", tokenizer="byte")


def test_folder_is_a_llama_with_our_sizes(exported):
    case, ckpt, folder = exported
    ours = dense_model(read_checkpoint(ckpt)).config
    hf, tok = load_hf(folder)
    assert type(hf).__name__ == "LlamaForCausalLM"
    c = hf.config
    got = (
        c.vocab_size,
        c.hidden_size,
        c.intermediate_size,
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.max_position_embeddings,
        c.rms_norm_eps,
        c.tie_word_embeddings,
    )
    assert got == (
        ours.vocab_size,
        ours.dim,
        ours.ffn_hidden,
        ours.n_layers,
        ours.n_heads,
        ours.n_kv_heads,
        ours.head_dim,
        ours.seq_len,
        ours.norm_eps,
        ours.tie_embeddings,
    )
    theta = c.rope_parameters["rope_theta"] if hasattr(c, "rope_parameters") else c.rope_theta
    assert theta == ours.rope_theta == 1000.0
    weights = load_file(folder / "model.safetensors")
    assert ("lm_head.weight" in weights) == (not ours.tie_embeddings)
    assert len(weights) == 2 + 9 * ours.n_layers + (not ours.tie_embeddings)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tok.eos_token_id == 256


def test_logits_equal_ours_in_fp32(exported):
    case, ckpt, folder = exported
    ours = dense_model(read_checkpoint(ckpt))
    hf, _ = load_hf(folder)
    tokens = prompt_batch(ours.config.vocab_size)
    with torch.no_grad():
        expected, got = ours(tokens), hf(tokens).logits
    assert expected.abs().max() > 0.1  # trained: the comparison is not between two near-zero tensors
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_greedy_generation_equals_transformers(exported):
    case, ckpt, folder = exported
    ours = dense_model(read_checkpoint(ckpt))
    hf, tok = load_hf(folder)
    prompt = [256, *b"def main("]
    with torch.no_grad():
        hf_out = hf.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)
    expected = hf_out[0, len(prompt) :].tolist()
    assert len(expected) >= 10  # both stop at EOS; a model that stops at once would make the test vacuous
    assert list(generate_tokens(ours, prompt, 20, eos_id=tok.eos_token_id, use_cache=True)) == expected
    assert list(generate_tokens(ours, prompt, 20, eos_id=tok.eos_token_id, use_cache=False)) == expected


def test_byte_tokenizer_round_trips_bytes_and_eos(tmp_path):
    ours = byte_tokenizer()
    for name, content in tokenizer_files(ours, max_len=4096).items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    # Every byte value is its own token, with the id of its value.
    to_char = bytes_to_unicode()
    assert tok.convert_tokens_to_ids([to_char[b] for b in range(256)]) == list(range(256))
    text = "def main(\x00\t\n): é€😀 \u0301 <|eos|> tail"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8")) == ours.encode(text).tolist()  # "<|eos|>" in a text is text
    assert (tok.eos_token, tok.eos_token_id, tok.pad_token_id) == (EOS_TOKEN, 256, 256)
    assert tok.decode(ids + [256]) == text + EOS_TOKEN
    assert tok.decode(ids + [256], skip_special_tokens=True) == text


def test_bpe_tokenizer_round_trips(tmp_path):
    texts = ["def main(argv):\n    return argv  # déjà vu\n" * 20, "the lighthouse keeps a pyramid of views\n" * 20]
    ours = train_bpe(texts, vocab_size=300)
    for name, content in tokenizer_files(ours, max_len=4096).items():
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "def main(argv):  # déjà <|eos|> vu, unseen: Ω"
    ids = tok(text)["input_ids"]
    assert ids == ours.encode(text).tolist()
    assert len(ids) < len(text.encode("utf-8"))  # merges were used
    assert tok.eos_token_id == ours.eos_id == 0
    assert tok.decode([*ids, 0], skip_special_tokens=True) == text
    assert tok.decode([*ids, 0]) == text + EOS_TOKEN


@pytest.mark.slow  # a subprocess or a CLI run: `make test`, not the edit loop
def test_cli_checkpoint_exports_with_its_own_tokenizer(tmp_path_factory, tmp_path):
    """A checkpoint written by src/train.py carries its tokenizer; src/export.py needs nothing else."""
    stage2 = two_stage_checkpoints(tmp_path_factory)[2]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, str(REPO / "src" / "export.py"), "--ckpt", str(stage2), "--out", str(tmp_path / "hf")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not been recovered" not in result.stderr
    hf, tok = load_hf(tmp_path / "hf")
    assert tok("é")["input_ids"] == [0xC3, 0xA9]
    provenance = json.loads((tmp_path / "hf" / "lighthouse.json").read_text())
    phase = provenance["phase"]
    assert (phase["phase"], phase["attention"]) == (1, "sdpa")
    assert (provenance["recovered"], provenance["global_step"]) == (True, 4)
    tokens = prompt_batch(257)
    with torch.no_grad():
        torch.testing.assert_close(
            hf(tokens).logits, dense_model(read_checkpoint(stage2))(tokens), atol=1e-5, rtol=1e-5
        )


def test_stage1_checkpoint_exports_with_a_warning(tmp_path_factory, tmp_path):
    stage1 = two_stage_checkpoints(tmp_path_factory)[1]
    with pytest.warns(NotRecoveredWarning, match="stage-1 checkpoint.*not been recovered"):
        folder = export_llama(stage1, tmp_path / "hf")
    assert json.loads((folder / "lighthouse.json").read_text())["recovered"] is False
    hf, _ = load_hf(folder)
    tokens = prompt_batch(257)
    with torch.no_grad():
        torch.testing.assert_close(
            hf(tokens).logits, dense_model(read_checkpoint(stage1))(tokens), atol=1e-5, rtol=1e-5
        )


def test_dense_and_recovered_checkpoints_export_without_warning(tmp_path_factory, tmp_path):
    dense_baseline = arch_checkpoint(tmp_path_factory, "mha-untied")  # stage 1, but trained dense
    recovered = two_stage_checkpoints(tmp_path_factory)[2]
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotRecoveredWarning)
        export_llama(dense_baseline, tmp_path / "a", tokenizer="byte")
        export_llama(recovered, tmp_path / "b")


def test_sharded_checkpoint_folder_is_refused_with_the_command(tmp_path):
    folder = tmp_path / "last.ckpt"  # what FSDP's sharded state_dict_type writes: a folder
    folder.mkdir()
    for name in (".metadata", "__0_0.distcp", "meta.pt"):
        (folder / name).write_bytes(b"")
    with pytest.raises(ValueError, match="sharded") as err:
        export_llama(folder, tmp_path / "hf")
    command = f"python -m lightning.pytorch.utilities.consolidate_checkpoint {folder} --output_file {folder}"
    assert command in str(err.value)
    assert not (tmp_path / "hf").exists()


# ---- the --out folder ------------------------------------------------------------------------------------------

STALE_NOTE = (
    "which a reader could load instead of or with the new model.safetensors: move them away, or export into another "
    "folder"
)


def assert_holds_exactly(folder, ckpt) -> None:
    """What model.init_from reads from ``folder`` is the checkpoint's weights, nothing else."""
    expected = llama_state_dict(dense_model(read_checkpoint(ckpt)), torch.float32)
    got = read_safetensors(folder)
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_out_holding_a_sharded_model_is_refused_and_left_as_it_was(tmp_path_factory, tmp_path):
    """Written beside a save_pretrained model's shards and index, model.safetensors is what transformers loads and
    the shards what model.init_from loads; the folder is refused (not cleaned: they may be the only copy)."""
    ckpt = arch_checkpoint(tmp_path_factory, "mha-untied")
    folder = tmp_path / "hf"
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder, max_shard_size="20KB")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    shards = sorted(name for name in before if name.endswith(".safetensors"))
    assert len(shards) > 3 and "model.safetensors.index.json" in before
    with pytest.raises(ValueError) as err:
        export_llama(ckpt, folder, tokenizer="byte")
    assert str(err.value) == (
        f"--out={str(folder)!r} is invalid: it holds weights this export would not overwrite "
        f"(model.safetensors.index.json, {shards[0]}, {shards[1]} and {len(shards) - 2} more), {STALE_NOTE}"
    )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    for name in [*shards, "model.safetensors.index.json"]:  # moved away, as the message says
        (folder / name).unlink()
    export_llama(ckpt, folder, tokenizer="byte")
    assert_holds_exactly(folder, ckpt)


@pytest.mark.parametrize(
    "names",
    [
        ["pytorch_model.bin"],
        ["adapter_model.safetensors"],
        ["pytorch_model.bin.index.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"],
    ],
    ids=["pickle", "other-safetensors", "sharded-pickle"],
)
def test_out_holding_other_weights_is_refused_naming_them(tmp_path, names):
    folder = tmp_path / "hf"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    with pytest.raises(ValueError) as err:
        export_llama(tmp_path / "never-read.ckpt", folder)  # refused before the checkpoint is looked for
    assert str(err.value) == (
        f"--out={str(folder)!r} is invalid: it holds weights this export would not overwrite ({', '.join(names)}), "
        f"{STALE_NOTE}"
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_exporting_again_into_the_same_folder_replaces_the_model(tmp_path_factory, tmp_path):
    """Re-exporting into an export's folder is the usual loop; files that are not weights stay."""
    first = arch_checkpoint(tmp_path_factory, "mha-untied")
    second = arch_checkpoint(tmp_path_factory, "gqa1-tied-vocab320")  # tied: no lm_head.weight left over
    folder = export_llama(first, tmp_path / "hf", tokenizer="byte")
    (folder / "README.md").write_text("notes\n")
    (folder / "training_args.bin").write_bytes(b"")  # not weights
    export_llama(second, folder, tokenizer="byte")
    assert_holds_exactly(folder, second)
    assert json.loads((folder / "config.json").read_text())["num_key_value_heads"] == 1
    assert (folder / "README.md").read_text() == "notes\n"


def test_a_model_no_export_wrote_is_refused_and_kept(tmp_path):
    """Exporting into the folder a run was imported from overwrote the pretrained weights (maybe their only copy)."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"the pretrained weights")
    (folder / "config.json").write_text("{}")
    with pytest.raises(ValueError) as err:
        export_llama(tmp_path / "never-read.ckpt", folder)  # refused before the checkpoint is looked for
    assert str(err.value) == (
        f"--out={str(folder)!r} is invalid: it holds a model.safetensors that no export wrote (no lighthouse.json "
        "beside it), such as the Hugging Face model a run was imported from: the export would overwrite what may be "
        "its only copy. Export into another folder"
    )
    assert (folder / "model.safetensors").read_bytes() == b"the pretrained weights"


def folder_bytes(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("failing", ["weights", "config"])
def test_a_failed_export_leaves_the_folder_as_it_was(tmp_path_factory, tmp_path, monkeypatch, capsys, failing):
    """A full disk in the middle of a re-export left the new weights under the old config (a model that matches
    neither checkpoint), or, failing in the weights, a traceback and a hidden temporary file."""
    from safetensors import SafetensorError

    import lighthouse.export as export

    first = arch_checkpoint(tmp_path_factory, "mha-untied")
    second = arch_checkpoint(tmp_path_factory, "gqa1-tied-vocab320")
    folder = export_llama(first, tmp_path / "hf", tokenizer="byte")
    before = folder_bytes(folder)

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    def full_disk_at_config(path):  # where a full disk shows: flushing the file's data
        if path.name == "config.json":
            raise OSError(28, "No space left on device", str(path))
        real_fsync(path)

    real_fsync = export.fsync_path
    if failing == "weights":
        monkeypatch.setattr(export, "save_file", full_disk)
    else:
        monkeypatch.setattr(export, "fsync_path", full_disk_at_config)
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    args = ["--ckpt", str(second), "--out", str(folder), "--tokenizer", "byte"]
    assert exits.run(main, args) == exits.EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err and "the folder is as it was" in err, err
    assert folder_bytes(folder) == before  # no staging folder left either
    fresh = tmp_path / "fresh"
    assert exits.run(main, ["--ckpt", str(second), "--out", str(fresh), "--tokenizer", "byte"]) == exits.EXIT_USAGE
    assert not fresh.exists()  # made for the export, removed with its failure


def test_weights_are_as_readable_as_the_config_and_a_killed_export_is_cleaned_up(tmp_path_factory, tmp_path):
    """safetensors writes through a private temporary file (0600): others could read the config but not the model.
    A kill mid-write leaves the staging folder; the next export into the folder removes it."""
    ckpt = arch_checkpoint(tmp_path_factory, "mha-untied")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / ".export-staging-killed").mkdir()
    (folder / ".export-staging-killed" / "model.safetensors").write_bytes(b"half")
    old_mask = os.umask(0o022)
    try:
        export_llama(ckpt, folder, tokenizer="byte")
    finally:
        os.umask(old_mask)
    mode = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert mode["model.safetensors"] == mode["config.json"] == 0o644
    assert not any(name.startswith(".export-staging-") for name in mode)
    assert_holds_exactly(folder, ckpt)


@pytest.mark.parametrize("out", ["", "  "], ids=["empty", "blank"])
def test_empty_out_is_refused_before_the_checkpoint_is_read(tmp_path_factory, tmp_path, monkeypatch, capsys, out):
    """``--out "$UNSET"`` exported into the current folder."""
    ckpt = arch_checkpoint(tmp_path_factory, "mha-untied")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTHOUSE_DEBUG", raising=False)
    message = f"error: --out={out!r} is invalid: it must name a folder, not be blank (is a shell variable unset?)"
    for given in (ckpt, tmp_path / "missing.ckpt"):  # the second: --out comes before --ckpt is looked for
        assert exits.run(main, ["--ckpt", str(given), "--out", out, "--tokenizer", "byte"]) == exits.EXIT_USAGE
        assert capsys.readouterr().err.splitlines()[0] == message
    assert list(tmp_path.iterdir()) == []
