"""How a hyperschedule model sees its input: the one place that lays out the network's input.

Training, evaluation, the hyperschedule sampler and τ-leaping all go through `InputLayout`, so
a sampler never reconstructs how its model was trained. Column 0 of a block is BOS (clean, never
noised); the schedule spans the L - 1 positions after it. Per `diffusion` options:

* attention `full` / `causal` / `schedule` (`masks.from_schedule` of each sequence's step) over
  [BOS ; x_t]; `two-copy` over [BOS ; x_t ; x0] (BD3-LM's vectorised block layout); `full`
  annealed from causal in the first `mask_anneal_steps` training steps (`anneal`);
* noise levels (0 for BOS and clean copies) when the model is noise-level conditioned;
* read-out `aligned` (output i predicts token i) or `shifted` (output i - 1 predicts token i), or
  `shifted-copy`: shifted for masked positions, aligned for visible ones (a visible token's row
  sees the token itself, so re-decoding it, the ε-hybrid's t = 0+ term, is a copy, not a
  prediction from the next position's input).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from hdlm import masks
from hdlm.errors import ConfigError, HdlmError
from hdlm.readout import clean_log_probs
from hdlm.schedules import Hyperschedule, from_spec, parse_spec


class InputLayout:
    """The input layout of a model with `diffusion` options `options` (a `DiffusionConfig`)."""

    def __init__(self, options, conditioned: bool, mask_id: int) -> None:
        self.options, self.conditioned, self.mask_id = options, conditioned, mask_id
        self.opened = 1.0  # attention=full: share of future entries open in training (annealing)

    def anneal(self, step: int) -> str | None:
        """Before training step `step`: with `mask_anneal_steps` = N, a share min(1, step / N)
        of the future attention entries is open (`annealed_mask`); the stage's label."""
        if not self.options.mask_anneal_steps:
            return None
        self.opened = min(1.0, step / self.options.mask_anneal_steps)
        return "attention annealing causal -> full" if self.opened < 1 else "full attention"

    def annealed_mask(self, length: int, device) -> Tensor:
        """[L, L]: causal, plus each future entry with probability `opened` (DiffuLLaMA's mask
        annealing; drawn from torch's generator, which the trainer seeds at every step)."""
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return causal | (torch.rand(length, length, device=device) < self.opened)

    @property
    def shift(self) -> int:
        """1 when masked positions read the row before (shifted, shifted-copy), 0 for aligned."""
        return int(self.options.readout != "aligned")

    @property
    def copy(self) -> bool:
        """Whether visible positions read their own row (read-out `shifted-copy`)."""
        return self.options.readout == "shifted-copy"

    def read_rows(self, x_t: Tensor) -> Tensor:
        """shifted-copy: the output row predicting each position after BOS, [B, L-1]: the row
        before a masked position, a visible position's own row."""
        own = torch.arange(1, x_t.shape[1] + 1, device=x_t.device)
        return own - (x_t == self.mask_id).long()

    @property
    def full_attention(self) -> bool:
        """Whether clean tokens saw (and were seen by) every position in training."""
        return self.options.attention == "full"

    @functools.lru_cache(maxsize=4)  # noqa: B019 (one layout per model; a few lengths)
    def schedule(self, length: int) -> Hyperschedule:
        """The training hyperschedule over the `length` positions after BOS."""
        return from_spec(self.options.schedule, length)

    def block_width(self) -> tuple[int, int]:
        """(width, steps per block) of a block schedule, needed by the two-copy layout."""
        spec = parse_spec(self.options.schedule)
        if spec.kind != "block":
            raise ConfigError("diffusion.attention=two-copy needs a block:WIDTH:STEPS schedule")
        return spec.width, spec.steps

    @property
    def block_offset(self) -> int:
        """The OFFSET of a block:WIDTH:STEPS:OFFSET schedule (0 when not given)."""
        return parse_spec(self.options.schedule).offset

    def logits(self, net, tokens: Tensor, x_t: Tensor, t: Tensor, step: Tensor) -> Tensor:
        """The network's output rows that predict the positions after BOS, [B, L-1, V], for the
        noisy tokens `x_t` [B, L-1] at levels `t` and schedule steps `step` [B, L-1]."""
        bos, length = tokens[:, :1], tokens.shape[1]
        zeros = torch.zeros_like(t[:, :1])
        options = {"causal": self.options.attention == "causal"}
        if self.options.attention == "two-copy":
            # with a block offset BOS lies inside block 0, so each copy has its own (BD3-LM)
            clean = tokens if self.block_offset else tokens[:, 1:]
            inputs = torch.cat((bos, x_t, clean), dim=1)
            options.update(attn_mask=self.two_copy_mask(length, tokens.device))
            options.update(positions=self.two_copy_positions(length, tokens.device))
            noise_level = torch.cat((zeros, t, torch.zeros_like(clean, dtype=t.dtype)), dim=1)
        else:
            inputs, noise_level = torch.cat((bos, x_t), dim=1), torch.cat((zeros, t), dim=1)
            if self.options.attention == "schedule":
                options.update(attn_mask=self.schedule_mask(length, step[:, 0]))
            elif self.options.attention == "full" and net.training and self.opened < 1:
                options.update(attn_mask=self.annealed_mask(length, tokens.device))
        out = net(inputs, noise_level=noise_level if self.conditioned else None, **options)
        if self.copy:
            rows = self.read_rows(x_t)
            return out.gather(1, rows[..., None].expand(-1, -1, out.shape[-1]))
        return out[:, self.read_index(length, tokens.device)]

    def plain_logits(self, net, tokens: Tensor, t: Tensor) -> Tensor:
        """The network's output for `tokens` [B, L] taken as one sequence (no BOS column added,
        no row selection) at levels `t` [B, L] (ignored without conditioning): full or causal
        attention as trained; `two-copy` models see a single copy under the block-causal mask
        with blocks i // width from position 0 (BD3-LM's sampling forward: a clean prefix of
        whole blocks and the noisy block). `LanguageModel.logits` calls this."""
        attention = self.options.attention
        if attention == "schedule":
            raise HdlmError(
                "lm.logits needs full, causal or two-copy attention; a model trained with "
                "diffusion.attention=schedule sees a mask per step: use lm.nelbo or lm.sample"
            )
        options = {"causal": attention == "causal"}
        if attention == "two-copy":
            # position p >= 1 is schedule position p - 1: block (p - 1 + offset) // width
            width, _ = self.block_width()
            mask = masks.block_causal(tokens.shape[1], width, self.block_offset - 1)
            options["attn_mask"] = mask.to(tokens.device)
        return net(tokens, noise_level=t if self.conditioned else None, **options)

    def log_probs(self, net, tokens: Tensor, x_t: Tensor, t: Tensor, step: Tensor) -> Tensor:
        """log p_θ(x0_i | x_t) for the positions after BOS, [B, L-1, V] (MASK excluded)."""
        return clean_log_probs(self.logits(net, tokens, x_t, t, step), self.mask_id)

    @functools.lru_cache(maxsize=8)  # noqa: B019
    def read_index(self, length: int, device) -> Tensor:
        """Which output row predicts each position after BOS. Aligned: its own row. Shifted: the
        row before it; in the two-copy layout a block's first position reads the clean copy of
        the previous position (what a KV cache holds for it at inference), position 1 reads BOS."""
        own = torch.arange(1, length)
        if self.options.readout == "aligned":
            return own.to(device)
        previous = own - 1
        if self.options.attention == "two-copy":
            width, _ = self.block_width()
            block_start = ((previous + self.block_offset) % width == 0) & (previous > 0)
            clean = length if self.block_offset else length - 1  # where the clean copy starts
            previous = torch.where(block_start, previous + clean, previous)
        return previous.to(device)

    def schedule_mask(self, length: int, step: Tensor) -> Tensor:
        """[B, 1, L, L]: `masks.from_schedule` for each sequence's step, with BOS as a settled
        position every other position may see."""
        inner = masks.from_schedule(self.schedule(length - 1), step)  # on step's device
        mask = F.pad(inner, (1, 0, 1, 0), value=False)
        mask[..., 1:, 0] = True
        mask[..., 0, 0] = True
        return mask[:, None]

    @functools.lru_cache(maxsize=4)  # noqa: B019
    def two_copy_mask(self, length: int, device) -> Tensor:
        """[2L-1, 2L-1]: BOS, then `masks.two_copy_block_diffusion` over the L-1 positions.
        With a block offset, [2L, 2L]: the two copies of all L positions, BOS in block 0."""
        width, _ = self.block_width()
        if self.block_offset:  # position p (BOS: 0) lies in block (p - 1 + offset) // width
            return masks.two_copy_block_diffusion(length, width, self.block_offset - 1).to(device)
        inner = masks.two_copy_block_diffusion(length - 1, width)
        mask = F.pad(inner, (1, 0, 1, 0), value=False)
        mask[:, 0] = True
        return mask.to(device)

    @functools.lru_cache(maxsize=4)  # noqa: B019
    def two_copy_positions(self, length: int, device) -> Tensor:
        """[2L-1]: BOS at 0, then `masks.positions_for_two_copy` shifted past it ([2L]:
        `masks.positions_for_two_copy(L)` with a block offset)."""
        if self.block_offset:
            return masks.positions_for_two_copy(length).to(device)
        inner = masks.positions_for_two_copy(length - 1) + 1
        return F.pad(inner, (1, 0), value=0).to(device)
