"""The backbone (`Transformer`), its KV cache, and `LanguageModel`: a network plus its family,
tokenizer and run configuration, as saved and loaded by `hdlm.load`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from hdlm.config import RunConfig
from hdlm.errors import CheckpointError
from hdlm.model.checkpoint import read_checkpoint, save_checkpoint
from hdlm.model.transformer import KVCache, Transformer
from hdlm.objectives import build_objective
from hdlm.tokenizer import Tokenizer

__all__ = ["KVCache", "LanguageModel", "Transformer", "load"]


class LanguageModel(nn.Module):
    """What a user holds: `.nelbo(tokens)`, `.sample(...)`, `.save(path)`."""

    def __init__(self, config: RunConfig, tokenizer: Tokenizer):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.objective = build_objective(config, tokenizer.mask_id)
        # a family may need more than the backbone (A3: `hdlm.model.a3.A3Transformer`)
        self.net = getattr(self.objective, "network", Transformer)(config.model)

    @property
    def device(self) -> torch.device:
        return self.net.embed.weight.device

    @torch.no_grad()
    def nelbo(
        self, tokens: Tensor, hidden: Tensor | None = None, samples: int | None = None
    ) -> Tensor:
        """Per-sequence NELBO in nats of blocks [B, L] starting with BOS (exact NLL for AR and
        A3). With `hidden` [B, L-1] (bool, the positions after BOS) it bounds
        -log p(x_hidden | the other tokens): infilling (a3, and mdlm / eps-hybrid), or a
        continuation (hidden at the end of each row; also exact for ar). `samples`: Monte Carlo
        draws of the noise level per sequence for diffusion bounds (default
        `diffusion.eval_steps`); exact families ignore it."""
        hidden = None if hidden is None else hidden.to(self.device)
        tokens = tokens.to(self.device)
        return self.objective.nelbo(self.net, tokens, hidden=hidden, samples=samples)

    def score_choices(self, context: str, choices: list[str], **options) -> list:
        """log p(choice | context) of each choice, raw and length-normalised
        (`hdlm.scoring.score_choices`: exact for ar and a3, a bound for diffusion)."""
        from hdlm.scoring import score_choices

        return score_choices(self, context, choices, **options)

    def sample(self, n: int = 1, length: int | None = None, **options) -> Tensor:
        """Token ids [n, length]; see `hdlm.sampling.sample` for the options."""
        from hdlm.sampling import sample

        return sample(self, n, length, **options)

    def decode(self, tokens: Tensor) -> list[str]:
        """Text of each row, without the leading BOS."""
        return [self.tokenizer.decode(row[1:].tolist()) for row in tokens]

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.net.state_dict(), self.config, self.tokenizer)


def load(path: str | Path, device: str | torch.device = "cpu") -> LanguageModel:
    """Load a checkpoint directory, or the newest checkpoint of a run directory."""
    _, config, weights, tokenizer = read_checkpoint(path)
    if config.model.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{path}: the model has {config.model.vocab_size} token ids but its tokenizer "
            f"{tokenizer.vocab_size}; the checkpoint mixes files of different runs"
        )
    lm = LanguageModel(config, tokenizer)
    lm.net.load_state_dict(weights)
    return lm.to(device).eval()
