"""Model configuration: dataclasses with field docs (shown by ``--print_config``), validation, named flavors."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields

from lighthouse.model import budget
from lighthouse.ops.lighthouse.geometry import LighthouseGeometry, check_lighthouse_params, check_options, fit_seq_len

# How the CLI spells the model's fields (``--model.arch.dim``); error messages use it so they name the flag.
PREFIX = "model.arch."

ATTENTION_BACKENDS = ("sdpa", "lighthouse_naive", "lighthouse")
CHECKPOINT_DTYPES = ("float32", "bfloat16")
"""Inner attention implementations, chosen by name; never a silent fallback from one to another."""


@dataclass
class LighthouseConfig:
    """Parameters of the Lighthouse layers (see src/lighthouse/ops/lighthouse/README.md)."""

    levels: int = 3
    """Pyramid levels L (>= 2); level 1 is the base sequence."""
    pooling_factor: int = 4
    """Pooling factor p between levels (a power of two)."""
    topk: int = 2048
    """Top-k budget K (a multiple of 128): entries refined per level over the whole sequence."""
    selection: str = "paper"
    """'paper': one selection per query head, K/V repeated to the query heads (the paper's). 'per_kv_group': one
    selection per KV head (grouped-query attention), query scores max-pooled over the group; K/V are gathered once
    per KV head and never repeated. Same as 'paper' when n_kv_heads = n_heads."""
    scorer: str = "norm"
    """Entry scores: 'norm' (L2 norms of q and k rows, the paper's default) or 'dilated' (norms of causal
    attention outputs over stride-`dilation` subsequences, attn(q,k,v) and attn(k,q,v); costs about 2/dilation of
    a dense attention forward per layer)."""
    dilation: int = 4
    """Stride delta of the dilated scorer (>= 1, must divide data.seq_len); unused by 'norm'."""
    causal: bool = False
    """Strictly causal selection (op README §8b): every refine decision reads only positions before the entry, by
    the previous entry's score against a cutoff rolled over the preceding candidates, so no output depends on a
    later token. false: the paper's per-tile ranking, which lets a position's output depend on later positions
    of its tile. Same S_sel, both backends; with 'lighthouse' the selection runs on select_causal.py's kernels."""


ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass
class RopeScaling:
    """RoPE frequency scaling for a context longer than pre-training: Hugging Face's ``rope_scaling`` types, with
    their field names, so a Llama checkpoint's settings import and export unchanged."""

    rope_type: str = "default"
    """'default' (no scaling), 'linear' (every frequency divided by factor), 'llama3' (Llama 3.1: wavelengths
    longer than original_max_position_embeddings / low_freq_factor divided by factor, shorter than
    original / high_freq_factor kept, smooth in between) or 'yarn' (YaRN: a ramp between the two over
    beta_slow..beta_fast rotations, cos and sin scaled by attention_factor)."""
    factor: float = 1.0
    """How many times longer the new context is (>= 1)."""
    original_max_position_embeddings: int | None = None
    """llama3 and yarn: the pre-training context length the scaling is relative to (required for them)."""
    low_freq_factor: float = 1.0
    """llama3: wavelengths above original / low_freq_factor are fully interpolated."""
    high_freq_factor: float = 4.0
    """llama3: wavelengths below original / high_freq_factor are kept (> low_freq_factor)."""
    beta_fast: float = 32.0
    """yarn: rotations over the original context above which a frequency is kept."""
    beta_slow: float = 1.0
    """yarn: rotations below which a frequency is fully interpolated (< beta_fast)."""
    attention_factor: float | None = None
    """yarn: factor on cos and sin (so on the attention logits, squared); null: 0.1 ln(factor) + 1."""
    truncate: bool = True
    """yarn: round the ramp's ends to whole dimensions (floor, ceil), as the YaRN reference does."""

    def validate(self) -> None:
        at = f"{PREFIX}rope_scaling."
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"{at}rope_type={self.rope_type!r} is not one of {ROPE_TYPES}")
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"{at}factor={self.factor!r} must be a number >= 1")
        if self.rope_type in ("llama3", "yarn"):
            original = self.original_max_position_embeddings
            if not isinstance(original, int) or isinstance(original, bool) or original < 1:
                raise ValueError(
                    f"{at}original_max_position_embeddings={original!r} must be an integer >= 1 for "
                    f"rope_type {self.rope_type!r} (the pre-training context length)"
                )
        if self.rope_type == "llama3" and not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                f"{at}low_freq_factor={self.low_freq_factor} and high_freq_factor={self.high_freq_factor} must "
                "satisfy 0 < low_freq_factor < high_freq_factor"
            )
        if self.rope_type == "yarn":
            if not 0 < self.beta_slow < self.beta_fast:
                raise ValueError(
                    f"{at}beta_slow={self.beta_slow} and beta_fast={self.beta_fast} must satisfy 0 < beta_slow "
                    "< beta_fast"
                )
            if self.attention_factor is not None and not self.attention_factor > 0:
                raise ValueError(f"{at}attention_factor={self.attention_factor} must be > 0 or null")


@dataclass
class ModelConfig:
    """Decoder-only LM: RMSNorm, RoPE, SwiGLU, causal attention with an inner backend chosen by name."""

    flavor: str | None = None
    """Named model size ('debug', 'small', 'paper', 'paper_1m'): it fills every field left null below (dim,
    n_layers, n_heads, ffn_hidden, dense_layers, lighthouse); a field given explicitly wins. Null: the defaults
    named with each field."""
    vocab_size: int = 257
    """Vocabulary size; LightningCLI links it from the data module's tokenizer."""
    dim: int | None = None
    """Model (residual stream) width; null: the flavor's (1024 without one)."""
    n_layers: int | None = None
    """Number of transformer blocks; null: the flavor's (30 without one)."""
    n_heads: int | None = None
    """Query heads; null: the flavor's (8 without one)."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None means n_heads (plain multi-head attention). Resolved to
    an integer when the config is built."""
    head_dim: int | None = None
    """Width of one head; None means dim // n_heads. Resolved to an integer when the config is built."""
    ffn_hidden: int | None = None
    """Hidden width of the SwiGLU feed-forward; null: the flavor's (1536 without one)."""
    rope_theta: float | None = None
    """RoPE base; long contexts want a large base. Null: 500000, or the model.init_from checkpoint's (a value
    given with init_from is a context extension: the new base)."""
    rope_scaling: RopeScaling | None = None
    """RoPE frequency scaling (linear, llama3, yarn) for a context longer than pre-training; null: none, or the
    model.init_from checkpoint's ({rope_type: default} removes the checkpoint's)."""
    seq_len: int = 65536
    """Training context length, the one data.seq_len sets (the CLI links it, so it is never configured twice, and
    errors name data.seq_len): Lighthouse layers must fit it, RoPE tables are precomputed for it, and validation's
    position buckets and the passkey and recall lengths are bounded by it. Not a maximum: longer inputs
    (evaluation, generation) extend the RoPE tables. Checkpoints written before it was renamed from max_seq_len
    load unchanged (lighthouse.checkpoint.read)."""
    norm_eps: float | None = None
    """RMSNorm epsilon; null: 1e-5, or the model.init_from checkpoint's."""
    attention: str = "sdpa"
    """Attention backend of the non-dense layers: 'sdpa', 'lighthouse_naive' (reference, CPU/GPU) or 'lighthouse'
    (Triton kernels)."""
    dense_layers: list[int] | None = None
    """Layer indices that always use dense SDPA (the paper keeps the first two and last two dense); null: the
    flavor's (none without one)."""
    lighthouse: LighthouseConfig | None = None
    """Lighthouse parameters, used by layers whose backend is a Lighthouse one; null: the flavor's (debug:
    L=2, p=4, K=128; paper_1m: L=4, p=4, K=4096), else L=3, p=4, K=2048. Giving any of its fields sets all of them
    (those not given take the defaults shown)."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass: between forward and backward only each block's input is kept."""
    checkpoint_dtype: str = "float32"
    """With activation_checkpointing: the dtype of the kept block inputs. 'bfloat16' halves that memory; the
    residual stream is then rounded to bf16 at every block boundary, in the forward too, so the recompute is
    exact (the block computes in fp32 inside, as always)."""
    checkpoint_offload: bool = False
    """With activation_checkpointing: keep the block inputs in pinned host memory instead of on the GPU, copied
    on a side stream that overlaps compute and fetched back one block ahead in the backward."""
    mlp_chunk_tokens: int | None = None
    """Run the SwiGLU feed-forward over chunks of this many positions, each recomputed in the backward, so its
    [N, ffn_hidden] intermediates never exist for the whole sequence at once. None: one piece."""
    loss_chunk_tokens: int | None = None
    """Compute the output projection and the cross-entropy over chunks of this many positions, recomputed in
    the backward, so the [N, vocab] fp32 logits are never materialised. None: one piece."""
    tie_embeddings: bool | None = None
    """Share the input embedding and output projection weights; null: false, or the model.init_from
    checkpoint's."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init; output projections are scaled by 1/sqrt(2*n_layers)."""

    def __post_init__(self) -> None:
        # What the config left open (neither given nor set by the flavor): an imported checkpoint fills these,
        # and any other field it disagrees with is refused (lighthouse.hf_import).
        flavored = FLAVORS.get(self.flavor, {})
        self.left_null = frozenset(f.name for f in fields(self) if getattr(self, f.name) is None) - set(flavored)
        self._fill_from_flavor()
        for name, value in NULL_MEANS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if isinstance(self.lighthouse, dict):  # plain dicts arrive from YAML/kwargs
            self.lighthouse = LighthouseConfig(**self.lighthouse)
        if isinstance(self.rope_scaling, dict):
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        self.dense_layers = list(self.dense_layers)
        self.validate()
        # One name per quantity: after validation the optional sizes hold their resolved values.
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads

    def _fill_from_flavor(self) -> None:
        """Fields left None take the flavor's value, else the base default; explicit values are kept."""
        if self.flavor is not None and self.flavor not in FLAVORS:
            raise ValueError(f"{PREFIX}flavor={self.flavor!r} is not one of {sorted(FLAVORS)} (or null)")
        for name, value in {**FLAVOR_FIELDS, **FLAVORS.get(self.flavor, {})}.items():
            if getattr(self, name) is None:
                setattr(self, name, copy.deepcopy(value))

    def uses_lighthouse(self) -> bool:
        return self.attention != "sdpa" and len(set(self.dense_layers)) < self.n_layers

    def validate(self) -> None:
        """Raise ValueError naming the field (as the CLI spells it), its value and the valid range."""
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{PREFIX}{name}={value!r} is invalid: it must be an integer >= 1")
        if not isinstance(self.seq_len, int) or self.seq_len < 1:
            raise ValueError(f"data.seq_len = {self.seq_len!r} must be an integer >= 1")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ValueError(
                f"{PREFIX}n_heads={self.n_heads} must divide {PREFIX}dim={self.dim} (or set {PREFIX}head_dim)"
            )
        head_dim = self.head_dim if self.head_dim is not None else self.dim // self.n_heads
        if head_dim % 2 or head_dim < 2:
            raise ValueError(f"head width {head_dim} must be even and >= 2 for RoPE ({PREFIX}head_dim)")
        kv_heads = self.n_kv_heads if self.n_kv_heads is not None else self.n_heads
        if kv_heads < 1 or self.n_heads % kv_heads:
            raise ValueError(
                f"{PREFIX}n_kv_heads={self.n_kv_heads} must divide {PREFIX}n_heads={self.n_heads} (1..n_heads)"
            )
        if self.checkpoint_dtype not in CHECKPOINT_DTYPES:
            raise ValueError(f"{PREFIX}checkpoint_dtype={self.checkpoint_dtype!r} is not one of {CHECKPOINT_DTYPES}")
        if (self.checkpoint_dtype != "float32" or self.checkpoint_offload) and not self.activation_checkpointing:
            raise ValueError(
                f"{PREFIX}checkpoint_dtype / checkpoint_offload choose what activation checkpointing keeps: set "
                f"{PREFIX}activation_checkpointing=true, or leave them at 'float32' / false"
            )
        for name in ("mlp_chunk_tokens", "loss_chunk_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{PREFIX}{name}={value!r} is invalid: it must be an integer >= 1 or null")
        if not self.rope_theta > 0:
            raise ValueError(f"{PREFIX}rope_theta={self.rope_theta} must be > 0")
        if self.rope_scaling is not None:
            self.rope_scaling.validate()
        if not (isinstance(self.init_std, (int, float)) and 0 < self.init_std < float("inf")):
            raise ValueError(f"{PREFIX}init_std={self.init_std!r} must be a finite number > 0")
        if not (isinstance(self.norm_eps, (int, float)) and 0 < self.norm_eps < 1):
            raise ValueError(f"{PREFIX}norm_eps={self.norm_eps!r} must be a number in (0, 1)")
        self._check_memory(head_dim, kv_heads)
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"{PREFIX}attention={self.attention!r} is not one of {ATTENTION_BACKENDS}")
        bad = [i for i in self.dense_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(
                f"{PREFIX}dense_layers has {bad}: layer indices must lie in [0, n_layers-1] = [0, {self.n_layers - 1}]"
            )
        # The one check of the Lighthouse parameters on the model path, also for a dense model (a later phase may
        # switch it to Lighthouse); the op checks each call again, as the public boundary of the op library.
        lh = self.lighthouse
        try:
            check_lighthouse_params(lh.levels, lh.pooling_factor, lh.topk)
            check_options(lh.selection, lh.scorer, lh.dilation, lh.causal)
        except ValueError as err:
            raise ValueError(f"{PREFIX}lighthouse.{err}") from None
        if self.uses_lighthouse():
            try:
                self.lighthouse_geometry()
            except ValueError as err:
                raise ValueError(f"data.seq_len does not fit {PREFIX}lighthouse: {err}") from None
            if lh.scorer == "dilated" and self.seq_len % lh.dilation:
                raise ValueError(
                    f"{PREFIX}lighthouse.dilation={lh.dilation} must divide data.seq_len={self.seq_len} "
                    "(the dilated scorer's subsequences have equal lengths)"
                )

    def lighthouse_geometry(self, seq_len: int | None = None) -> LighthouseGeometry:
        """The Lighthouse layers' sizes at ``seq_len`` positions (default: the training length). The parameters were
        checked when the config was built, so only the length is checked here."""
        lh = self.lighthouse
        return fit_seq_len(self.seq_len if seq_len is None else seq_len, lh.levels, lh.pooling_factor, lh.topk)

    def _check_memory(self, head_dim: int, kv_heads: int) -> None:
        """Refuse a model that cannot be built on this machine, naming the sizes that decide it, before anything is
        allocated (100000 layers would otherwise build for hours; see lighthouse.model.budget)."""
        host = budget.host_memory_bytes()
        params = budget.parameter_count(
            self.vocab_size, self.dim, self.n_layers, self.n_heads, kv_heads, head_dim, self.ffn_hidden,
            self.tie_embeddings,
        )  # fmt: skip
        weights = params * budget.FP32
        rope = self.seq_len * head_dim * budget.ROPE_BYTES_PER_ENTRY
        if weights + rope > host:
            sizes = (
                f"{PREFIX}vocab_size={self.vocab_size}, {PREFIX}dim={self.dim}, {PREFIX}n_layers={self.n_layers}, "
                f"{PREFIX}ffn_hidden={self.ffn_hidden}"
            )
            what = f"{params:,} parameters ({budget.gib(weights)} in fp32; set by {sizes})"
            if rope > weights:
                what = f"RoPE tables of {budget.gib(rope)} for data.seq_len = {self.seq_len}"
            raise ValueError(
                f"the model cannot be built on this machine: {what}, but the host has {budget.gib(host)} of memory"
            )
        # One sequence's residual stream in fp32, needed at once on this host's devices (context parallelism
        # splits it, over at most all of them).
        stream = self.seq_len * self.dim * budget.FP32
        if stream > host and stream > host + budget.device_memory_bytes():
            raise ValueError(
                f"data.seq_len = {self.seq_len} is too long for {PREFIX}dim={self.dim} "
                f"here: one sequence's fp32 residual stream alone takes {budget.gib(stream)}, more than this "
                f"machine's memory (host and GPUs together)"
            )


# Fields whose null means a fixed default (or, with model.init_from, the checkpoint's value).
NULL_MEANS: dict = dict(rope_theta=500_000.0, norm_eps=1e-5, tie_embeddings=False)

# What a flavor decides, and each field's value without one: the paper's widths and depth, no dense layers.
FLAVOR_FIELDS: dict = dict(dim=1024, n_layers=30, n_heads=8, ffn_hidden=1536, dense_layers=[], lighthouse={})

FLAVORS: dict[str, dict] = {
    # Trains on a 2-core CPU in seconds; used by tests.
    "debug": dict(
        dim=64,
        n_layers=4,
        n_heads=4,
        ffn_hidden=192,
        dense_layers=[0, 3],
        lighthouse=dict(levels=2, pooling_factor=4, topk=128),
    ),
    # About 50M parameters: a real model for single-GPU experiments.
    "small": dict(dim=640, n_layers=10, n_heads=10, ffn_hidden=1792, dense_layers=[0, 9]),
    # The paper's model: dim 1024, 30 layers, 8 heads x 128, SwiGLU 1536, bytes, layers 0,1,28,29 dense.
    "paper": dict(dim=1024, n_layers=30, n_heads=8, ffn_hidden=1536, dense_layers=[0, 1, 28, 29]),
    # The authors' 1M-token flavour of it (for data.seq_len 1048576): no dense layers, L=4, p=4, K=4096.
    "paper_1m": dict(
        dim=1024,
        n_layers=30,
        n_heads=8,
        ffn_hidden=1536,
        dense_layers=[],
        lighthouse=dict(levels=4, pooling_factor=4, topk=4096),
    ),
}
# The context length is not part of a flavor: the CLI links it from data.seq_len (in Python: seq_len).


def model_flavor(name: str, **overrides) -> ModelConfig:
    """A named model size with optional field overrides, e.g. ``model_flavor("paper", attention="lighthouse")``."""
    return ModelConfig(flavor=name, **overrides)
