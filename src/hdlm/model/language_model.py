"""`LanguageModel`: a network plus its family, tokenizer and run configuration, as saved and
loaded by `hdlm.load`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import Tensor, nn

from hdlm.config import A3Config, RunConfig, apply_overrides, complete, from_dict, to_dict
from hdlm.data.tokenizer import Tokenizer
from hdlm.errors import CheckpointError, ConfigError, HdlmError
from hdlm.eval.scoring import score_choices
from hdlm.families import Family, family
from hdlm.hardware import DTYPES
from hdlm.model import hf, official
from hdlm.model.a3 import A3Transformer
from hdlm.model.checkpoint import read_checkpoint, save_checkpoint
from hdlm.model.transformer import Transformer
from hdlm.objectives import build_objective
from hdlm.sampling import sample

# the network classes the families table names
NETWORKS: dict[str, type[Transformer]] = {"transformer": Transformer, "a3": A3Transformer}


class LanguageModel(nn.Module):
    """What a user holds: `.nelbo(tokens)`, `.sample(...)`, `.save(path)`."""

    def __init__(self, config: RunConfig, tokenizer: Tokenizer):
        super().__init__()
        self.config, self.tokenizer = config, tokenizer
        self.objective = build_objective(config, tokenizer.mask_id)
        self.net = NETWORKS[self.family.network](config.model)
        self.denoiser = self.objective.denoiser(self.net, tokenizer.eos_id)  # what samplers walk

    @property
    def family(self) -> Family:
        """This model's row of the families table."""
        return family(self.config.family)

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

    def nelbo_terms(self, tokens: Tensor, samples: int | None = None) -> dict[str, Tensor]:
        """The terms of `nelbo` per sequence [B] in nats: diffusion, reconstruction and prior
        for diffusion families, the NLL for ar and a3 (`Objective.nelbo_terms`)."""
        return self.objective.nelbo_terms(self.net, tokens.to(self.device), samples=samples)

    def score_choices(self, context: str, choices: list[str], **options) -> list:
        """log p(choice | context) of each choice, raw and length-normalised
        (`hdlm.eval.scoring.score_choices`: exact for ar and a3, a bound for diffusion)."""
        return score_choices(self, context, choices, **options)

    @torch.no_grad()
    def logits(self, tokens: Tensor, t: Tensor | float | None = None) -> Tensor:
        """The network's clean-token logits [B, L, V] for (noisy) `tokens` [B, L] at noise
        levels `t` ([B, L], [B] or a number; ignored by models without noise conditioning), in
        the model's read-out (aligned: row i scores token i; shifted: row i scores token i + 1).
        The tokens are one sequence as given: no BOS is added (`InputLayout.plain_logits`)."""
        if self.family.is_a3:
            raise HdlmError("lm.logits is for the diffusion and ar families; a3 models sample "
                            "with two streams: use lm.nelbo or lm.sample")  # fmt: skip
        tokens = tokens.to(self.device)
        if self.config.model.time_conditioning and t is None:
            raise HdlmError("this model is noise-level conditioned: pass t to lm.logits")
        if t is not None:
            t = torch.as_tensor(t, dtype=torch.float32, device=self.device)
            t = (t[:, None] if t.dim() == 1 else t).expand(tokens.shape)
        return self.objective.layout.plain_logits(self.net, tokens, t)

    def set_a3_evaluation(self, overrides: list[str]) -> None:
        """Apply `a3.eval_*=VALUE` overrides (order, group size, seed of the exact likelihood) to
        this A3 model; its objective is rebuilt."""
        keys = ("eval_order", "eval_group_size", "eval_seed")
        mine = [o.removeprefix("a3.") for o in overrides]
        for item in mine:
            if not self.family.is_a3 or item.split("=", 1)[0].strip() not in keys:
                raise ConfigError(
                    f"this {self.config.family} model can change only a3.{', a3.'.join(keys)} "
                    f"of an a3 model; got 'a3.{item}'"
                )
        a3 = from_dict(A3Config, apply_overrides(to_dict(self.config.a3), mine), "a3")
        self.config = complete(dataclasses.replace(self.config, a3=a3))
        self.objective = build_objective(self.config, self.tokenizer.mask_id)
        self.denoiser = self.objective.denoiser(self.net, self.tokenizer.eos_id)

    def cast(self, precision: str) -> LanguageModel:
        """Cast the network's weights and buffers once to `precision`'s dtype (fp32, bf16, fp16)
        for sampling and evaluation: every layer then runs in that dtype, with none of
        autocast's re-casting of float32 weights at each call. fp32 is the reference;
        log-probabilities are still computed in float32. For inference, not training."""
        self.net.to(DTYPES[precision])
        return self

    def sample(self, n: int = 1, length: int | None = None, **options) -> Tensor:
        """Token ids [n, length]; see `hdlm.sampling.sample` for the options."""
        return sample(self, n, length, **options)

    def decode(self, tokens: Tensor) -> list[str]:
        """Text of each row, without the leading BOS."""
        return [self.tokenizer.decode(row[1:].tolist()) for row in tokens]

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, self.net.state_dict(), self.config, self.tokenizer)


def load(
    path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32"
) -> LanguageModel:
    """Load a checkpoint directory, or the newest checkpoint of a run directory, with its weights
    in `precision` (`LanguageModel.cast`; fp32, the reference, as stored); `hf:OWNER/NAME`,
    directories of released checkpoints (HDLM, MDLM, SEDD, BD3-LM: `hdlm.model.official`) and
    transformers models (gpt2, llama, mistral, qwen2, qwen3: `hdlm.model.hf`) are imported on
    the fly."""
    if str(path).startswith(official.HUB_PREFIX):
        path = official.hub_snapshot(str(path).removeprefix(official.HUB_PREFIX))
    if Path(path).is_dir() and official.is_official(Path(path)):
        config, weights, tokenizer = official.import_official(path)
    elif Path(path).is_dir() and hf.is_transformers_model(Path(path)):
        config, imported = hf.import_run_config(path)
        weights, tokenizer = imported.weights, imported.tokenizer
    else:
        _, config, weights, tokenizer = read_checkpoint(path)
    if config.model.vocab_size != tokenizer.vocab_size:
        raise CheckpointError(
            f"{path}: the model has {config.model.vocab_size} token ids but its tokenizer "
            f"{tokenizer.vocab_size}; the checkpoint mixes files of different runs"
        )
    lm = LanguageModel(config, tokenizer)
    lm.net.load_state_dict(weights)
    return lm.to(device).eval().cast(precision)
