"""Memory options for very long contexts: block inputs kept off the GPU, and a cross-entropy that never holds
the whole sequence's logits.

With per-block activation checkpointing the only activations kept from the forward to the backward are the
inputs of the 30-odd blocks, ``[B, N, dim]`` each. At 1M tokens and dim 1024 that is 4 GiB per block in fp32
(2 GiB in bf16), more than everything else together, so these are what the options move or shrink. The
model (model.py) decides where they apply; this file holds the mechanisms, usable on any tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor


class HostOffload(torch.autograd.graph.saved_tensors_hooks):
    """Keep the tensors autograd saves inside this context in pinned host memory until the backward needs them.

    Wrap ``torch.utils.checkpoint(block, x, ...)`` in it: the checkpoint saves its inputs under the caller's
    hooks (its own hook only applies to what the block saves inside), so exactly the block inputs move to
    the host. Copies run on a side stream, so the forward does not wait for them. In the backward, blocks
    are unpacked in reverse order; unpacking entry ``i`` starts the copy of entry ``i - 1`` back to the GPU,
    so the next block's input arrives while this block recomputes and differentiates (at most two entries are
    on the GPU at once). Tensors in ``keep`` (e.g. the RoPE tables, module buffers that every block shares)
    stay where they are. Use one instance per forward pass.

    On a CPU-only machine the same bookkeeping runs with plain copies, so the logic is testable anywhere.
    """

    def __init__(self, keep: tuple[Tensor, ...] = ()):
        # The hooks are methods of a separate object: as this object's own methods they would make it refer to
        # itself (through the hook attributes the base class keeps), and a step's host copies, GiBs of pinned
        # memory at long context, would then outlive the step's graph until a full cycle collection.
        copies = _HostCopies(keep)
        self._entries = copies.entries  # for offloaded_bytes; the list does not refer back to this object
        super().__init__(copies.pack, copies.unpack)

    @property
    def offloaded_bytes(self) -> int:
        return sum(e["host"].numel() * e["host"].element_size() for e in self._entries)


class _HostCopies:
    """The host side of HostOffload: one entry per saved tensor, shared by its pack and unpack hooks and
    freed with the autograd graph that holds them."""

    def __init__(self, keep: tuple[Tensor, ...]):
        self._keep = {id(t) for t in keep}
        self.entries: list[dict] = []
        self._stream = torch.cuda.Stream() if torch.cuda.is_available() else None

    def pack(self, tensor: Tensor):
        if id(tensor) in self._keep:
            return tensor
        entry = {"device": tensor.device, "ready": None, "back": None}
        if tensor.is_cuda:
            stream = self._stream
            # The copy may start only once the tensor is computed; the allocator must not hand its memory to
            # another tensor before the copy has read it (record_stream).
            stream.wait_stream(torch.cuda.current_stream(tensor.device))
            with torch.cuda.stream(stream):
                entry["host"] = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                entry["host"].copy_(tensor, non_blocking=True)
                entry["ready"] = torch.cuda.Event()
                entry["ready"].record(stream)
            tensor.record_stream(stream)
        else:
            entry["host"] = tensor.detach().clone()
        self.entries.append(entry)
        return len(self.entries) - 1

    def _fetch(self, index: int) -> None:
        entry = self.entries[index]
        if entry["back"] is not None:
            return
        if entry["device"].type != "cuda":
            entry["back"] = entry["host"]
            return
        with torch.cuda.stream(self._stream):
            self._stream.wait_event(entry["ready"])  # the host copy is complete
            entry["back"] = entry["host"].to(entry["device"], non_blocking=True)
            entry["ready"] = torch.cuda.Event()
            entry["ready"].record(self._stream)

    def unpack(self, packed):
        if isinstance(packed, Tensor):
            return packed
        self._fetch(packed)
        if packed > 0:
            self._fetch(packed - 1)  # prefetch: the backward visits the blocks in reverse order
        entry = self.entries[packed]
        tensor = entry["back"]
        if entry["device"].type == "cuda":
            torch.cuda.current_stream(entry["device"]).wait_event(entry["ready"])
            tensor.record_stream(torch.cuda.current_stream(entry["device"]))
        # The GPU copy now belongs to the caller (the block's recompute); the host copy stays in case autograd
        # unpacks the same tensor again, and is freed with the graph.
        entry["back"] = None
        return tensor


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Per-token ``cross_entropy(hidden @ weight.T, targets)`` computed ``chunk`` rows at a time.

    Forward keeps only the per-token losses; backward recomputes each chunk's logits and turns them into the
    gradients of ``hidden`` and ``weight`` at once, so at most ``[chunk, vocab]`` logits exist at any time
    instead of ``[N, vocab]`` in fp32 plus its gradient. The matmul runs in ``compute_dtype`` (the autocast
    dtype where autocast is on, as the plain ``nn.Linear`` would), the softmax in fp32 (fp64 for fp64 inputs),
    exactly like ``F.cross_entropy(logits.float(), ...)`` on the plain path.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, compute_dtype: torch.dtype):
        softmax_dtype = torch.promote_types(compute_dtype, torch.float32)
        losses = torch.empty(hidden.shape[0], dtype=softmax_dtype, device=hidden.device)
        w = weight.to(compute_dtype)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows].to(compute_dtype) @ w.T).to(softmax_dtype)  # [chunk, vocab]
            picked = logits.gather(1, targets[rows, None]).squeeze(1)
            losses[rows] = torch.logsumexp(logits, dim=1) - picked
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses: Tensor):
        hidden, weight, targets = ctx.saved_tensors
        chunk, compute_dtype = ctx.chunk, ctx.compute_dtype
        w = weight.to(compute_dtype)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        softmax_dtype = torch.promote_types(compute_dtype, torch.float32)
        grad_weight = torch.zeros(weight.shape, dtype=softmax_dtype, device=weight.device)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            h = hidden[rows].to(compute_dtype)
            # d loss_t / d logits_t = softmax(logits_t) - onehot(target_t), scaled by the loss's own gradient.
            grad_logits = torch.softmax((h @ w.T).to(softmax_dtype), dim=1)
            grad_logits[torch.arange(grad_logits.shape[0], device=grad_logits.device), targets[rows]] -= 1
            grad_logits = (grad_logits * grad_losses[rows, None]).to(compute_dtype)  # [chunk, vocab]
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)
            grad_weight += (grad_logits.T @ h).to(softmax_dtype)
        return grad_hidden, grad_weight.to(weight.dtype), None, None, None


def chunked_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
    """Per-token losses ``[T]`` (fp32; fp64 for fp64 inputs) of the logits ``hidden [T, dim] @ weight.T``
    (``weight [vocab, dim]``), never holding more than ``chunk`` rows of logits; gradients reach both inputs."""
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = torch.promote_types(hidden.dtype, weight.dtype)
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk, compute_dtype)
