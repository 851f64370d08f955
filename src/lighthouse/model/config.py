"""Model configuration: dataclasses with field docs (shown by ``--print_config``), validation, named flavors."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from lighthouse.model import budget
from lighthouse.ops.lighthouse.geometry import check_lighthouse_params, lighthouse_geometry

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
    rope_theta: float = 500_000.0
    """RoPE base; long contexts want a large base."""
    max_seq_len: int = 65536
    """Training context length: RoPE tables are precomputed for it (longer inputs extend them) and Lighthouse
    layers must accept it. The CLI sets it from data.seq_len, so it is never configured twice."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    attention: str = "sdpa"
    """Attention backend of the non-dense layers: 'sdpa', 'lighthouse_naive' (reference, CPU/GPU) or 'lighthouse'
    (Triton kernels)."""
    dense_layers: list[int] | None = None
    """Layer indices that always use dense SDPA (the paper keeps the first two and last two dense); null: the
    flavor's (none without one)."""
    lighthouse: LighthouseConfig | None = None
    """Lighthouse parameters, used by layers whose backend is a Lighthouse one; null: the flavor's (debug:
    L=2, p=4, K=128; paper_1m: L=4, p=4, K=4096), else L=3, p=4, K=2048. Giving any of them sets all three
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
    tie_embeddings: bool = False
    """Share the input embedding and output projection weights."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init; output projections are scaled by 1/sqrt(2*n_layers)."""

    def __post_init__(self) -> None:
        self._fill_from_flavor()
        if isinstance(self.lighthouse, dict):  # plain dicts arrive from YAML/kwargs
            self.lighthouse = LighthouseConfig(**self.lighthouse)
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
        if not isinstance(self.max_seq_len, int) or self.max_seq_len < 1:
            raise ValueError(f"data.seq_len (= {PREFIX}max_seq_len) = {self.max_seq_len!r} must be an integer >= 1")
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
        lh = self.lighthouse
        try:
            check_lighthouse_params(lh.levels, lh.pooling_factor, lh.topk)
        except ValueError as err:
            raise ValueError(f"{PREFIX}lighthouse.{err}") from None
        if self.uses_lighthouse():
            try:
                lighthouse_geometry(self.max_seq_len, lh.levels, lh.pooling_factor, lh.topk)
            except ValueError as err:
                raise ValueError(f"data.seq_len does not fit {PREFIX}lighthouse: {err}") from None

    def _check_memory(self, head_dim: int, kv_heads: int) -> None:
        """Refuse a model that cannot be built on this machine, naming the sizes that decide it, before anything is
        allocated (100000 layers would otherwise build for hours; see lighthouse.model.budget)."""
        host = budget.host_memory_bytes()
        params = budget.parameter_count(
            self.vocab_size, self.dim, self.n_layers, self.n_heads, kv_heads, head_dim, self.ffn_hidden,
            self.tie_embeddings,
        )  # fmt: skip
        weights = params * budget.FP32
        rope = self.max_seq_len * head_dim * budget.ROPE_BYTES_PER_ENTRY
        if weights + rope > host:
            sizes = (
                f"{PREFIX}vocab_size={self.vocab_size}, {PREFIX}dim={self.dim}, {PREFIX}n_layers={self.n_layers}, "
                f"{PREFIX}ffn_hidden={self.ffn_hidden}"
            )
            what = f"{params:,} parameters ({budget.gib(weights)} in fp32; set by {sizes})"
            if rope > weights:
                what = (
                    f"RoPE tables of {budget.gib(rope)} for data.seq_len (= {PREFIX}max_seq_len) = {self.max_seq_len}"
                )
            raise ValueError(
                f"the model cannot be built on this machine: {what}, but the host has {budget.gib(host)} of memory"
            )
        # One sequence's residual stream in fp32, needed at once on this host's devices (context parallelism
        # splits it, over at most all of them).
        stream = self.max_seq_len * self.dim * budget.FP32
        if stream > host and stream > host + budget.device_memory_bytes():
            raise ValueError(
                f"data.seq_len (= {PREFIX}max_seq_len) = {self.max_seq_len} is too long for {PREFIX}dim={self.dim} "
                f"here: one sequence's fp32 residual stream alone takes {budget.gib(stream)}, more than this "
                f"machine's memory (host and GPUs together)"
            )


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
# The context length is not part of a flavor: the CLI links it from data.seq_len, in Python it is max_seq_len.


def model_flavor(name: str, **overrides) -> ModelConfig:
    """A named model size with optional field overrides, e.g. ``model_flavor("paper", attention="lighthouse")``."""
    return ModelConfig(flavor=name, **overrides)
