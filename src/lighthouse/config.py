"""Model configuration: dataclasses with field docs (shown by ``--print_config``), validation, named flavors."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from lighthouse.ops.lighthouse.geometry import check_lighthouse_params, lighthouse_geometry

# How the CLI spells the model's fields (``--model.arch.dim``); error messages use it so they name the flag.
PREFIX = "model.arch."

ATTENTION_BACKENDS = ("sdpa", "lighthouse_naive", "lighthouse")
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
    """Named model size ('debug', 'small' or 'paper'): it fills every size field left null (dim, n_layers,
    n_heads, ffn_hidden, dense_layers); a field given explicitly wins. Null: the defaults named below."""
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
    lighthouse: LighthouseConfig = field(default_factory=LighthouseConfig)
    """Lighthouse parameters, used by layers whose backend is a Lighthouse one."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass: less activation memory for very long contexts."""
    tie_embeddings: bool = False
    """Share the input embedding and output projection weights."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init; output projections are scaled by 1/sqrt(2*n_layers)."""

    def __post_init__(self) -> None:
        if isinstance(self.lighthouse, dict):  # plain dicts arrive from YAML/kwargs
            self.lighthouse = LighthouseConfig(**self.lighthouse)
        self._fill_sizes()
        self.dense_layers = list(self.dense_layers)
        self.validate()
        # One name per quantity: after validation the optional sizes hold their resolved values.
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads

    def _fill_sizes(self) -> None:
        """Fields left None take the flavor's value, else the base size; explicit values are kept."""
        if self.flavor is not None and self.flavor not in FLAVORS:
            raise ValueError(f"{PREFIX}flavor={self.flavor!r} is not one of {sorted(FLAVORS)} (or null)")
        sizes = {**BASE_SIZES, **FLAVORS.get(self.flavor, {})}
        for name, value in sizes.items():
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
        if self.rope_theta <= 0:
            raise ValueError(f"{PREFIX}rope_theta={self.rope_theta} must be > 0")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"{PREFIX}attention={self.attention!r} is not one of {ATTENTION_BACKENDS}")
        bad = [i for i in self.dense_layers if not 0 <= i < self.n_layers]
        if bad:
            raise ValueError(
                f"{PREFIX}dense_layers has {bad}: layer indices must lie in [0, n_layers-1] = "
                f"[0, {self.n_layers - 1}]"
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


# The sizes a flavor decides. Without a flavor: the paper's widths and depth, no dense layers (the plain default).
BASE_SIZES: dict = dict(dim=1024, n_layers=30, n_heads=8, ffn_hidden=1536, dense_layers=[])

FLAVORS: dict[str, dict] = {
    # Trains on a 2-core CPU in seconds; used by tests.
    "debug": dict(dim=64, n_layers=4, n_heads=4, ffn_hidden=192, dense_layers=[0, 3]),
    # About 50M parameters: a real model for single-GPU experiments.
    "small": dict(dim=640, n_layers=10, n_heads=10, ffn_hidden=1792, dense_layers=[0, 9]),
    # The paper's model: dim 1024, 30 layers, 8 heads x 128, SwiGLU 1536, bytes, layers 0,1,28,29 dense.
    "paper": dict(dim=1024, n_layers=30, n_heads=8, ffn_hidden=1536, dense_layers=[0, 1, 28, 29]),
}


def model_flavor(name: str, **overrides) -> ModelConfig:
    """A named model size with optional field overrides, e.g. ``model_flavor("paper", attention="lighthouse")``."""
    return ModelConfig(flavor=name, **overrides)
