"""How the next token is chosen from the logits: greedy, or temperature / top-p sampling with a
seed. Rank 0 draws (`Sampler`) and broadcasts the token, so every worker continues with the
same one, and a seed reproduces the draws whatever the worker count."""

from dataclasses import dataclass

import torch

from longctx.errors import LongCtxError


@dataclass(frozen=True)
class Sampling:
    """`temperature` 0 is greedy (argmax); above 0 the logits are divided by it and the token is
    drawn from the smallest set of most likely tokens whose probability reaches `top_p`,
    with a torch.Generator seeded by `seed` (None: a random seed)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = None

    def check(self):
        """LongCtxError naming the first setting out of range; returns self."""
        if not 0.0 <= self.temperature <= 100.0:
            raise LongCtxError(f"temperature must be between 0 and 100 (got {self.temperature})")
        if not 0.0 < self.top_p <= 1.0:
            raise LongCtxError(f"top_p must be in (0, 1] (got {self.top_p})")
        return self


class Sampler:
    """Draws tokens for one request (`sampling`: a Sampling, None for greedy); call it with the
    logits [vocab] of the next position to get a token id."""

    def __init__(self, sampling):
        self.sampling = sampling or Sampling()
        self.generator = None
        if self.sampling.temperature > 0:
            self.generator = torch.Generator()
            if self.sampling.seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(self.sampling.seed)

    def __call__(self, logits):
        if self.generator is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float().cpu() / self.sampling.temperature, dim=-1)
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < self.sampling.top_p  # the first always stays
        ordered = ordered * keep
        choice = torch.multinomial(ordered / ordered.sum(), 1, generator=self.generator)
        return int(order[choice])
