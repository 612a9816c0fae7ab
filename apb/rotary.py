"""RoPE re-rotation: a post-RoPE vector computed at position p, moved to position p' exactly.

RoPE rotates each pair of dimensions (i, i + D/2) by the angle p * inv_freq[i] (the
`rotate_half` layout of Llama, Qwen2, Mistral and Qwen2-VL's text positions) and multiplies
by the embedding's `attention_scaling`. Rotations of a plane compose, so the vector at p'
is the one at p rotated by a' - a, whose cosine and sine come from the model's own
cos/sin at p and p' (its frequencies, whatever its scaling type: linear, llama3, yarn, ...):
cos(a' - a) = cos a' cos a + sin a' sin a and sin(a' - a) = sin a' cos a - cos a' sin a, each
product carrying attention_scaling twice, which is divided out.

Rope types whose frequencies depend on the sequence length (dynamic, longrope) get the
frequencies the embedding has once it has seen p'; the rotation is then the scoring
approximation it is for those models, not an identity.
"""

import torch

from longctx.errors import LongCtxError


def rotary_embedding(model):
    """The rotary embedding module of a loaded Hugging Face causal LM: its base model's
    `rotary_emb` (Llama, Qwen2, Mistral) or its language model's (Qwen2-VL family).
    LongCtxError when the model has none (no RoPE)."""
    base = model.base_model
    for owner in (base, getattr(base, "language_model", None)):
        rotary = getattr(owner, "rotary_emb", None)
        if rotary is not None:
            return rotary
    raise LongCtxError(f"{type(model).__name__} has no rotary embedding; the query compressor needs RoPE")


def _cos_sin(rotary, positions, device):
    """The embedding's (cos, sin) [S, D] float32 at `positions`, attention_scaling included."""
    ids = torch.tensor([list(positions)], device=device)
    cos, sin = rotary(torch.zeros(1, device=device, dtype=torch.float32), ids)
    return cos.reshape(-1, *cos.shape[-2:])[0].float(), sin.reshape(-1, *sin.shape[-2:])[0].float()


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rerotation:
    """Moves post-RoPE rows from positions `source` to `target` (same length, row i to row i).

    `rotary` is the model's rotary embedding (`rotary_embedding`). The cosines and sines are
    computed at the first call and kept: call it during the forward whose rows it moves (the
    model has already computed that forward's embeddings). Who uses it: the query compressor
    (`apb.compress.QueryCompressor`), to score with the question at its true positions.
    """

    def __init__(self, rotary, source, target):
        if len(source) != len(target):
            raise ValueError(f"{len(source)} source positions but {len(target)} target positions")
        self.rotary, self.source, self.target = rotary, list(source), list(target)
        self._cos_sin = None

    def __call__(self, x):
        """x [..., S, D] (any float dtype) at the source positions -> float32 at the target positions."""
        if self._cos_sin is None:
            self._cos_sin = self._delta(x.device)
        cos, sin = self._cos_sin
        x = x.float()
        return x * cos + _rotate_half(x) * sin

    def _delta(self, device):
        """(cos, sin) [S, D] of the rotation by target - source, attention scaling divided out."""
        cos_s, sin_s = _cos_sin(self.rotary, self.source, device)
        cos_t, sin_t = _cos_sin(self.rotary, self.target, device)
        scale = float(getattr(self.rotary, "attention_scaling", 1.0)) ** 2
        return (cos_t * cos_s + sin_t * sin_s) / scale, (sin_t * cos_s - cos_t * sin_s) / scale
