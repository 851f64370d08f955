"""Import of Hugging Face Llama folders: transformers' logits reproduced (fp32, 1e-5) for GQA, tied embeddings and
each RoPE scaling type; sharded folders; refusals naming the field (through the CLI: one line, exit 2); tokenizers
with a BOS; and import -> training with the real CLI -> export computing in transformers what it computes here."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import save_file
from tokenizers import processors
from training_helpers import fit, tiny_config

from lighthouse.checkpoint.read import dense_model, read_checkpoint
from lighthouse.data.datamodule import LMDataModule
from lighthouse.data.tokenizer import TextTokenizer, train_bpe
from lighthouse.export import export_llama, tokenizer_files
from lighthouse.hf_import import import_llama, read_safetensors, rope_settings
from lighthouse.model.attention import rope_tables
from lighthouse.model.config import ModelConfig, RopeScaling

transformers = pytest.importorskip("transformers")

# head_dim 16 with theta 10000: wavelengths from 6 to ~20000 positions, so with an original context of 32 every
# llama3 band (kept, smoothed, interpolated) and both sides of the yarn ramp hold some dimension.
ARCHS = {
    "mha-untied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa-tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "gqa1-untied": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False),
}
ROPES = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    },
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "yarn-tuned": {
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 32,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "attention_factor": 1.3,
        "truncate": False,
    },
}
VOCAB = 320


def hf_llama(folder, arch: str = "gqa-tied", rope: str = "default", max_shard_size: str = "1GB", **sizes):
    """A random LlamaForCausalLM with weights large enough for logits of order 1 (norm gains too), saved."""
    torch.manual_seed(0)
    sizes = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        **ARCHS[arch],
        **sizes,
    }
    config = transformers.LlamaConfig(
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_parameters={**ROPES[rope], "rope_theta": 10_000.0},
        **sizes,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return model


def tokens(n: int = 48) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, n), generator=torch.Generator().manual_seed(1))


def assert_same_logits(ours: torch.nn.Module, hf, n: int = 48, tol: float = 1e-5) -> None:
    batch = tokens(n)
    with torch.no_grad():
        expected, got = hf(batch).logits, ours.eval()(batch)
    assert expected.abs().max() > 1  # not a comparison of two near-zero tensors
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("rope", sorted(ROPES))
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_logits_equal_transformers(tmp_path, arch, rope):
    hf = hf_llama(tmp_path, arch, rope)
    ours = import_llama(tmp_path, ModelConfig(seq_len=64))
    c = ours.config
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.tie_embeddings) == (
        4,
        ARCHS[arch]["num_key_value_heads"],
        16,
        ARCHS[arch]["tie_word_embeddings"],
    )
    assert (c.vocab_size, c.dim, c.n_layers, c.ffn_hidden, c.norm_eps) == (VOCAB, 64, 2, 96, 1e-6)
    assert_same_logits(ours, hf)
    if rope != "default":  # the scaling is exercised: without it ({rope_type: default}) the logits differ
        unscaled = import_llama(tmp_path, dataclasses.replace(c, rope_scaling=RopeScaling()))
        with torch.no_grad():
            assert (unscaled.eval()(tokens()) - hf(tokens()).logits).abs().max() > 1e-2


def test_sharded_folder_loads(tmp_path):
    hf = hf_llama(tmp_path, "gqa1-untied", "llama3", max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2
    assert_same_logits(import_llama(tmp_path, ModelConfig(seq_len=64)), hf)


def test_model_safetensors_beside_an_index_of_shards_is_refused(tmp_path):
    """What an export into a sharded model's folder used to leave: transformers loads model.safetensors, the index
    names the shards; neither is taken silently."""
    hf_llama(tmp_path, "mha-untied", max_shard_size="40KB")
    other = {name: 2 * tensor for name, tensor in read_safetensors(tmp_path).items()}
    save_file(other, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        import_llama(tmp_path, ModelConfig(seq_len=64))
    assert str(err.value) == (
        f"model.init_from={str(tmp_path)!r} holds both model.safetensors and model.safetensors.index.json (which "
        "names other files), so which weights are meant is ambiguous: move away the stale one, model.safetensors "
        "or the index and its shards"
    )


def test_a_folder_named_like_weights_is_named_not_a_missing_index(tmp_path):
    (tmp_path / "model.safetensors").mkdir()
    with pytest.raises(FileNotFoundError, match="model.safetensors is not a file"):
        read_safetensors(tmp_path)


def test_both_rope_fields_agreeing_read_as_one():
    """This project's export writes both (transformers 4 and 5 each read one); equal settings are accepted."""
    hf = {
        "rope_theta": 1e4,
        "rope_scaling": {"type": "linear", "factor": 2.0},
        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
    }
    assert rope_settings(hf) == (1e4, RopeScaling(rope_type="linear", factor=2.0))


def test_index_of_model_safetensors_alone_loads(tmp_path):
    """An index that names only model.safetensors agrees with it: nothing is ambiguous."""
    hf = hf_llama(tmp_path, "mha-untied")
    weight_map = dict.fromkeys(read_safetensors(tmp_path), "model.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_same_logits(import_llama(tmp_path, ModelConfig(seq_len=64)), hf)


def test_transformers4_config_layout_reads_the_same(tmp_path):
    """transformers 4.x wrote rope_theta and rope_scaling ({"type": ...} in older files) beside each other."""
    old = {"rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}, "max_position_embeddings": 64}
    new = {"rope_parameters": {"rope_type": "linear", "rope_theta": 5e5, "factor": 2.0}}
    assert rope_settings(old) == rope_settings(new) == (5e5, RopeScaling(rope_type="linear", factor=2.0))
    assert rope_settings({}) == (10_000.0, None)  # LlamaConfig's defaults


def test_yarn_mscale_becomes_attention_factor():
    hf = {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "mscale": 0.707, "mscale_all_dim": 1.0}}
    hf["max_position_embeddings"] = 128
    _, scaling = rope_settings(hf)
    expected = (0.1 * 0.707 * math.log(4) + 1) / (0.1 * math.log(4) + 1)
    assert scaling.attention_factor == pytest.approx(expected)
    assert scaling.original_max_position_embeddings == 128  # transformers' default: max_position_embeddings


def test_rope_tables_default_scaling_is_no_scaling():
    plain = rope_tables(16, 40, 1e4)
    for cos, base in zip(rope_tables(16, 40, 1e4, RopeScaling()), plain, strict=True):
        assert torch.equal(cos, base)
    linear = rope_tables(16, 40, 1e4, RopeScaling(rope_type="linear", factor=4.0))
    assert torch.allclose(linear[0][8], plain[0][2])  # position 8 at factor 4 is position 2 unscaled


def edit_config(folder, **changes) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


BAD_FOLDERS = {
    "mistral": (dict(model_type="mistral"), "model_type='mistral' is not 'llama'"),
    "bias": (dict(attention_bias=True), "attention_bias=True adds biases"),
    "mlp-bias": (dict(mlp_bias=True), "mlp_bias=True adds biases"),
    "gelu": (dict(hidden_act="gelu"), "hidden_act='gelu' is not 'silu'"),
    "moe": (dict(num_local_experts=8), "num_local_experts=8 makes it a mixture of experts"),
    "dynamic-rope": (
        dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4}),
        "rope_parameters.rope_type='dynamic' is not one this project computes",
    ),
    "unknown-rope-key": (
        dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4, "alpha": 3}),
        r"rope_parameters has \['alpha'\]",
    ),
    "partial-rope": (dict(partial_rotary_factor=0.5), "partial_rotary_factor=0.5"),
    "bad-llama3": (
        dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4, "low_freq_factor": 4.0}),
        "low_freq_factor=4.0 and high_freq_factor=4.0",
    ),
    "no-size": (dict(intermediate_size=None), "intermediate_size=None is missing"),
    "no-vocab": (dict(vocab_size=None), "vocab_size=None is missing"),
    "text-size": (dict(hidden_size="64"), "hidden_size='64' must be an integer >= 1"),
    "bool-layers": (dict(num_hidden_layers=True), "num_hidden_layers=True must be an integer >= 1"),
    "text-eps": (dict(rms_norm_eps="1e-5"), r"rms_norm_eps='1e-5' must be a number in \(0, 1\)"),
    "text-tie": (dict(tie_word_embeddings="yes"), "tie_word_embeddings='yes' must be true or false"),
    "bool-theta": (
        dict(rope_theta=None, rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": True}),
        "rope_theta=True must be a number > 0",
    ),
    "scaling-not-object": (
        dict(rope_parameters=None, rope_scaling="linear"),
        "rope_scaling='linear' must be a JSON object or null",
    ),
    "two-ropes-disagree": (  # transformers 5 applies rope_scaling's linear x4 here; the import read no scaling
        dict(
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            rope_scaling={"rope_type": "linear", "factor": 4.0},
        ),
        "rope_parameters=.* and rope_scaling=.* disagree",
    ),
    "two-thetas-disagree": (
        dict(rope_theta=5e5, rope_scaling=None, rope_parameters={"rope_type": "default", "rope_theta": 1e4}),
        "rope_parameters.rope_theta=10000.0 and rope_theta=500000.0 disagree",
    ),
    "linear-without-factor": (  # was read as factor 1: the model imported without its scaling
        dict(rope_scaling=None, rope_parameters={"rope_type": "linear", "rope_theta": 1e4}),
        "rope_parameters.factor is missing, which rope_type 'linear' needs",
    ),
    "yarn-without-lengths": (  # was a TypeError
        dict(max_position_embeddings=None, rope_scaling=None, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}),
        "rope_parameters.factor is missing, which rope_type 'yarn' needs",
    ),
    "wrong-shape": (dict(intermediate_size=80), r"mlp.gate_proj.weight has shape \(96, 64\).*\(80, 64\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_bad_folder_is_refused_naming_the_field(tmp_path, case):
    hf_llama(tmp_path)
    changes, message = BAD_FOLDERS[case]
    edit_config(tmp_path, **changes)
    with pytest.raises(ValueError, match=message):
        import_llama(tmp_path, ModelConfig(seq_len=64))


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    hf_llama(tmp_path, "mha-untied")
    weights = read_safetensors(tmp_path)
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"does not: \['model.layers.0.self_attn.q_proj.bias'\]"):
        import_llama(tmp_path, ModelConfig(seq_len=64))
    del weights["model.layers.0.self_attn.q_proj.bias"], weights["lm_head.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks \['lm_head.weight'\]"):
        import_llama(tmp_path, ModelConfig(seq_len=64))


def test_pickles_are_never_loaded(tmp_path):
    hf_llama(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"no .safetensors weights \(it has \['pytorch_model.bin'\]: pickles"):
        import_llama(tmp_path, ModelConfig(seq_len=64))


def test_config_sizes_that_contradict_are_refused_and_extension_kept(tmp_path):
    hf_llama(tmp_path, "gqa-tied")
    for field, value, key in (("dim", 128, "hidden_size"), ("n_kv_heads", 4, "num_key_value_heads")):
        with pytest.raises(ValueError, match=rf"model.arch.{field}={value} contradicts .*\({key}="):
            import_llama(tmp_path, ModelConfig(seq_len=64, **{field: value}))
    with pytest.raises(ValueError, match="model.arch.tie_embeddings=False contradicts"):
        import_llama(tmp_path, ModelConfig(seq_len=64, tie_embeddings=False))
    # Sizes that agree are fine; rope_theta and rope_scaling given are the extension.
    yarn = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128}
    model = import_llama(tmp_path, ModelConfig(seq_len=64, dim=64, rope_theta=8e4, rope_scaling=yarn))
    assert (model.config.rope_theta, model.config.rope_scaling) == (8e4, RopeScaling(**yarn))
    with pytest.raises(ValueError, match="vocab_size=400 .* exceeds .* embedding rows"):
        import_llama(tmp_path, ModelConfig(seq_len=64, vocab_size=400))


@pytest.mark.parametrize(
    "case, message",
    [
        ("contradiction", "model.arch.dim=32 contradicts the checkpoint"),
        ("not-llama", "model_type='gemma' is not 'llama'"),
        ("no-folder", "model.init_from='.*missing': no such folder"),
        # data.tokenizer null takes the folder's: the missing folder is still named as model.init_from (it was named
        # as data.tokenizer='hf:...', a field the user never set)
        ("no-folder-its-tokenizer", "^error: model.init_from='.*missing': no such folder$"),
    ],
)
def test_cli_refuses_with_one_message_and_exit_2(tmp_path, capsys, case, message):
    from lighthouse.train.cli import run

    folder = tmp_path / "hf"
    hf_llama(folder)
    if case == "not-llama":
        edit_config(folder, model_type="gemma")
    config = tiny_config(tmp_path, "bad", max_steps=1)
    config["model"]["init_from"] = str(tmp_path / "missing" if case.startswith("no-folder") else folder)
    config["model"]["arch"].update(n_layers=None, n_heads=None, ffn_hidden=None)  # dim 32 stays: contradiction
    if case != "contradiction":
        config["model"]["arch"]["dim"] = None
    config["data"]["tokenizer"] = None if case == "no-folder-its-tokenizer" else "byte"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert run(["fit", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]


# ---- tokenizers with a BOS -------------------------------------------------------------------------------------

TEXTS = ["the lighthouse keeps a pyramid of views\n" * 10, "def main(argv):\n    return argv  # déjà vu\n" * 10]


def llama_like_tokenizer(folder, bos_in_json: bool) -> TextTokenizer:
    """A byte-level BPE with Llama's specials: BOS '<s>' either in tokenizer.json's post-processor or named only
    by tokenizer_config.json (add_bos_token), as older Llama folders do."""
    tok = train_bpe(TEXTS, vocab_size=300).tok
    tok.add_special_tokens(["<s>", "</s>"])
    if bos_in_json:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 300)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    settings = {"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return TextTokenizer.from_hf_folder(folder)


@pytest.mark.parametrize("bos_in_json", [True, False], ids=["bos-in-tokenizer-json", "bos-in-tokenizer-config"])
def test_hf_tokenizer_with_bos_round_trips(tmp_path, bos_in_json):
    ours = llama_like_tokenizer(tmp_path / "hf", bos_in_json)
    assert (ours.bos_id, ours.bos_token, ours.vocab_size) == (300, "<s>", 302)
    eos = ours.eos_id  # '<|eos|>' of the BPE trainer comes first among the EOS candidates
    text = "def main(argv):  # déjà <s> vu, unseen: Ω"
    ids = ours.encode(text).tolist()
    assert ours.decode(ids) == text and 300 not in ids  # '<s>' inside a text is text
    [doc] = ours.encode_documents([text])
    assert doc.tolist() == [300, *ids]
    # The exported folder gives transformers the same ids, BOS included.
    for name, content in tokenizer_files(ours, max_len=64).items():
        (tmp_path / "out" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "out" / name).write_text(content if isinstance(content, str) else json.dumps(content))
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert hf(text)["input_ids"] == [300, *ids]
    assert (hf.bos_token_id, hf.eos_token_id) == (300, eos)
    assert TextTokenizer.from_str(ours.to_str()).bos_id == 300  # a checkpoint's copy keeps it


def test_tokenizer_without_bos_is_unchanged(tmp_path):
    tok = train_bpe(TEXTS, vocab_size=300)
    folder = tmp_path / "hf"
    folder.mkdir()
    tok.save(folder / "tokenizer.json")
    ours = TextTokenizer.from_hf_folder(folder)
    assert ours.bos_id is None and ours.fingerprint == tok.fingerprint
    assert [d.tolist() for d in ours.encode_documents(["abc"])] == [tok.encode("abc").tolist()]


def test_documents_start_with_bos_in_the_shards(tmp_path):
    llama_like_tokenizer(tmp_path / "hf", bos_in_json=False)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"d{i}.txt").write_text(f"document {i}: " + TEXTS[i % 2])
    dm = LMDataModule(
        corpus=str(corpus),
        tokenizer=f"hf:{tmp_path / 'hf'}",
        data_dir=str(tmp_path / "data"),
        seq_len=32,
        batch_size=1,
        val_fraction=0.3,
        progress=False,
        tokenize_workers=1,
    )
    assert (dm.vocab_size, dm.tokenizer.bos_id) == (302, 300)
    dm.setup("fit")
    split = dm._train_split
    stream = split.read(0, split.n_tokens)
    starts = split.doc_starts
    assert len(starts) >= 2 and (stream[starts] == 300).all()
    ends = stream == dm.eos_id
    assert ends.sum() == len(starts) and (stream[1:][ends[:-1]] == 300).all()  # every EOS is followed by BOS
    assert (stream == 300).sum() == len(starts)


# ---- import -> train with the CLI -> export --------------------------------------------------------------------


def test_import_train_export_round_trip(tmp_path):
    """A Llama folder with its tokenizer is imported by the real CLI (sizes null, tokenizer from the folder, a new
    rope_theta and a yarn scaling as the extension), trained 3 steps with Lighthouse layers, and exported: the
    exported folder computes in transformers what the checkpoint computes here, and needs the import folder no more."""
    folder = tmp_path / "pretrained"
    hf_llama(folder, "gqa1-untied", "default", num_hidden_layers=3)
    llama_like_tokenizer(folder, bos_in_json=True)
    config = tiny_config(tmp_path, "extend", max_steps=3, every_n=3, seq_len=512)
    config["model"]["init_from"] = str(folder)
    extension = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
    config["model"]["arch"].update(
        dim=None, n_layers=None, n_heads=None, ffn_hidden=None, rope_theta=40_000.0, rope_scaling=extension
    )
    config["data"]["tokenizer"] = None  # the folder's
    config["trainer"]["limit_val_batches"] = 0
    fit(tmp_path, config)
    ckpt = tmp_path / "logs" / "extend" / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(ckpt)
    assert checkpoint["global_step"] == 3 and "init_from" not in checkpoint["hyper_parameters"]
    trained = dense_model(checkpoint)
    assert (trained.config.dim, trained.config.n_kv_heads, trained.config.rope_theta) == (64, 1, 40_000.0)
    assert trained.config.rope_scaling == RopeScaling(**extension)
    imported = import_llama(folder, dataclasses.replace(trained.config))
    assert not torch.equal(imported.layers[1].attention.wq.weight, trained.layers[1].attention.wq.weight)
    shutil.rmtree(folder)  # from here on, only the checkpoint
    out = export_llama(ckpt, tmp_path / "exported")
    exported = json.loads((out / "config.json").read_text())
    yarn_defaults = {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": True}
    assert exported["rope_parameters"] == {**extension, **yarn_defaults, "rope_theta": 40_000.0}
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_theta"] == 40_000.0
    assert_same_logits(trained, hf)
    # Past the original 128 positions too; transformers computes the RoPE angles in fp32 (this project in fp64),
    # an error of about position x 6e-8 rad that shows at 1e-5 in the logits by position 200.
    assert_same_logits(trained, hf, n=200, tol=5e-5)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("ab")["input_ids"][0] == 300 == exported["bos_token_id"]


@pytest.mark.slow  # a subprocess or a CLI run: `make test`, not the edit loop
def test_imported_run_resumes_like_any_run(tmp_path):
    """3 steps + resume to 5 give the weights of 5 steps in one go: the resumed job takes the checkpoint's weights,
    optimizer and schedule, not a second import."""
    folder = tmp_path / "pretrained"
    hf_llama(folder, "gqa-tied", "llama3", num_hidden_layers=3)
    llama_like_tokenizer(folder, bos_in_json=False)

    def config(name: str, max_steps: int) -> dict:
        c = tiny_config(tmp_path, name, max_steps=max_steps, every_n=3, seq_len=512)
        c["model"]["init_from"] = str(folder)
        c["model"]["arch"].update(dim=None, n_layers=None, n_heads=None, ffn_hidden=None)
        c["trainer"]["limit_val_batches"] = 0
        return c

    fit(tmp_path, config("split", 3), tag="split")
    fit(tmp_path, config("split", 5), ckpt_path="last", tag="split")
    fit(tmp_path, config("whole", 5), tag="whole")
    split, whole = (read_checkpoint(tmp_path / "logs" / n / "checkpoints" / "last.ckpt") for n in ("split", "whole"))
    assert split["global_step"] == whole["global_step"] == 5
    assert split["lighthouse_model"]["rope_scaling"]["rope_type"] == "llama3"
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(split["state_dict"][name], tensor), name
