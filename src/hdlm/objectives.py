"""Training losses and evaluation NELBOs, one objective per family.

Every objective sees blocks of tokens [B, L] whose column 0 is BOS (never scored) and exposes:

* `loss(net, tokens, generator)`: a scalar to minimise, in nats per scored token (a Monte Carlo
  estimate of the NELBO for diffusion families);
* `nelbo(net, tokens)`: per-sequence negative log-likelihood bound in nats, the quantity
  perplexity is computed from (exact for AR);
* `scored_tokens(tokens)`: how many tokens of each sequence the NELBO scores (L - 1).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from hdlm import masks
from hdlm.errors import ConfigError, HdlmError
from hdlm.gamma_hybrid import GammaHybrid, SigmaSchedule
from hdlm.processes import Absorbing, EpsHybrid, NoiseProcess, Uniform
from hdlm.schedules import Hyperschedule, from_spec

if TYPE_CHECKING:
    from hdlm.model.transformer import Transformer


def clean_log_probs(logits: Tensor, mask_id: int) -> Tensor:
    """log p_θ(x0 = v) over the vocabulary in float32, MASK excluded (it is never a clean token)."""
    logits = logits.float()
    logits[..., mask_id] = float("-inf")
    return logits.log_softmax(-1)


class MaskedCrossEntropy(torch.autograd.Function):
    """-log softmax(logits)[target] per row, MASK's logit at -inf, computed in float32 by chunks
    of rows: the gradient softmax - onehot is formed chunk by chunk in the logits' dtype, so no
    [N, V] float32 tensor is stored or swept more than once (the fused form of `clean_log_probs`
    followed by a gather; same values)."""

    CHUNK = 128  # rows per chunk: a [128, V] float32 block stays in cache for V up to ~8k

    @staticmethod
    def chunks(logits: Tensor, mask_id: int):
        for start in range(0, len(logits), MaskedCrossEntropy.CHUNK):
            rows = slice(start, start + MaskedCrossEntropy.CHUNK)
            block = logits[rows].to(torch.float32, copy=True)
            block[:, mask_id] = float("-inf")
            yield rows, block

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, mask_id: int) -> Tensor:
        flat, target = logits.flatten(0, -2), target.flatten()
        lse = torch.empty(target.shape, device=logits.device)
        nll = torch.empty_like(lse)
        for rows, block in MaskedCrossEntropy.chunks(flat, mask_id):
            lse[rows] = block.logsumexp(-1)
            nll[rows] = lse[rows] - block.gather(1, target[rows, None]).squeeze(1)
        ctx.save_for_backward(logits, target, lse)
        ctx.mask_id = mask_id
        return nll.view(logits.shape[:-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, target, lse = ctx.saved_tensors
        flat, grad = logits.flatten(0, -2), grad.flatten()
        out = torch.empty_like(flat)
        for rows, block in MaskedCrossEntropy.chunks(flat, ctx.mask_id):
            block.sub_(lse[rows, None]).exp_()
            block[torch.arange(len(block)), target[rows]] -= 1
            out[rows] = block.mul_(grad[rows, None])
        return out.view_as(logits), None, None


class AutoregressiveObjective:
    """-log p(x) = -Σ_{i>=1} log p_θ(x_i | x_<i): next-token cross-entropy under a causal mask."""

    name = "ar"
    default_sampler = "ar"

    def __init__(self, config, mask_id: int) -> None:
        self.config, self.mask_id = config, mask_id

    def token_nll(self, net: Transformer, tokens: Tensor) -> Tensor:
        """-log p_θ(x_i | x_<i) for i = 1..L-1, shape [B, L-1]."""
        logits = net(tokens[:, :-1], causal=True)
        return MaskedCrossEntropy.apply(logits, tokens[:, 1:], self.mask_id)

    def loss(self, net: Transformer, tokens: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.token_nll(net, tokens).mean()

    def nelbo(
        self, net: Transformer, tokens: Tensor, hidden: Tensor | None = None, samples=None
    ) -> Tensor:
        """Exact -log p(x) [B]; with `hidden` [B, L-1] a suffix of each row (a continuation),
        exact -log p(x_hidden | the prefix) = -Σ_{i hidden} log p_θ(x_i | x_<i). Any other
        hidden set would need the tokens after it as context, which a causal model never sees.
        `samples` is ignored: nothing here is estimated."""
        nll = self.token_nll(net, tokens)
        if hidden is None:
            return nll.sum(-1)
        if not (hidden[:, 1:] >= hidden[:, :-1]).all():
            raise HdlmError(
                "an ar model scores a continuation (hidden positions at the end of the row) "
                "exactly, not a span with text after it; infill with a3 or mdlm"
            )
        return torch.where(hidden, nll, 0.0).sum(-1)

    @staticmethod
    def scored_tokens(tokens: Tensor) -> int:
        return tokens.shape[1] - 1


class DiffusionObjective:
    """The NELBO of a hyperschedule diffusion: schedule x process x attention x read-out (HDLM).

    Training (Monte Carlo, unbiased): each sequence gets one step s of the schedule, stratified
    across the batch; every position i is noised at its own level t_i = T[s-1, i] and pays the
    process' term for the reverse step to T[s, i]; the sum is scaled by S. With
    `attention: two-copy` (block schedules) every block gets its own within-block step k and the
    network sees [BOS ; noisy ; clean] at once (BD3-LM's vectorised layout), scaled by K.
    In continuous time a point r in the step is drawn and `rate_loss` is integrated instead.
    Evaluation sums every step exactly when there are at most `eval_steps` of them, else uses
    `eval_steps` stratified draws; the result bounds the NLL from above (docs/math.md).
    Positions: column 0 is BOS (clean, never scored); the schedule spans the L - 1 others.
    """

    default_sampler = "ancestral"

    def __init__(self, config, mask_id: int) -> None:
        self.config = config
        self.options = d = config.diffusion
        self.mask_id = mask_id
        self.process = build_process(d, config.model.vocab_size, mask_id)
        self.conditioned = config.model.time_conditioning

    @functools.lru_cache(maxsize=4)  # noqa: B019 (one objective per model; a few lengths)
    def schedule(self, length: int) -> Hyperschedule:
        """The hyperschedule over the `length` positions after BOS."""
        return from_spec(self.options.schedule, length)

    @staticmethod
    def scored_tokens(tokens: Tensor) -> int:
        return tokens.shape[1] - 1

    # -- which step, which levels -------------------------------------------------------------

    def block_width(self, schedule: Hyperschedule) -> tuple[int, int]:
        """(width, steps per block) of a block schedule, needed by the two-copy layout."""
        kind, *numbers = self.options.schedule.split(":")
        if kind != "block":
            raise ConfigError("diffusion.attention=two-copy needs a block:WIDTH:STEPS schedule")
        return int(numbers[0]), int(numbers[1])

    def step_index(self, tokens: Tensor, draws: Tensor) -> tuple[Tensor, Tensor, int]:
        """Per-position step numbers [B, L-1] and fractions in the step [B, L-1] from uniform
        `draws` in [0, 1) ([B] for one step per sequence, [B, n_blocks] for two-copy), and the
        number of steps each draw stands for (S, or K per block)."""
        schedule = self.schedule(tokens.shape[1] - 1)
        if self.options.attention == "two-copy":
            width, steps = self.block_width(schedule)
            block_of = torch.arange(schedule.length, device=tokens.device) // width
            position = draws[:, block_of] * steps
            return block_of * steps + position.floor().long() + 1, position.frac(), steps
        position = (draws * schedule.num_steps)[:, None].expand(-1, schedule.length)
        return position.floor().long() + 1, position.frac(), schedule.num_steps

    def levels(self, tokens: Tensor, step: Tensor, frac: Tensor) -> tuple[Tensor, Tensor]:
        """(t, s) per position: T[step-1] and T[step] in discrete time; in continuous time the
        level at `frac` of the way through the step and its rate of decrease per step."""
        table = self.schedule(tokens.shape[1] - 1).table.to(tokens.device)
        before, after = table.gather(0, step - 1), table.gather(0, step)
        if self.options.time == "discrete":
            return before, after
        return before + frac * (after - before), before - after

    # -- the network's view ---------------------------------------------------------------------

    def log_probs(self, net, tokens: Tensor, x_t: Tensor, t: Tensor, step: Tensor) -> Tensor:
        """log p_θ(x0_i | x_t) for the positions after BOS, [B, L-1, V] (MASK excluded)."""
        return clean_log_probs(self.logits(net, tokens, x_t, t, step), self.mask_id)

    def logits(self, net, tokens: Tensor, x_t: Tensor, t: Tensor, step: Tensor) -> Tensor:
        """The network's output rows that predict the positions after BOS, [B, L-1, V]."""
        bos, length = tokens[:, :1], tokens.shape[1]
        zeros = torch.zeros_like(t[:, :1])
        options = {"causal": self.options.attention == "causal"}
        if self.options.attention == "two-copy":
            inputs = torch.cat((bos, x_t, tokens[:, 1:]), dim=1)
            options.update(attn_mask=self.two_copy_mask(length, tokens.device))
            options.update(positions=torch.cat((torch.arange(length), torch.arange(1, length))))
            noise_level = torch.cat((zeros, t, torch.zeros_like(t)), dim=1)
        else:
            inputs, noise_level = torch.cat((bos, x_t), dim=1), torch.cat((zeros, t), dim=1)
            if self.options.attention == "schedule":
                options.update(attn_mask=self.schedule_mask(length, step[:, 0]))
        if "positions" in options:
            options["positions"] = options["positions"].to(tokens.device)
        out = net(inputs, noise_level=noise_level if self.conditioned else None, **options)
        return out[:, self.read_index(length, tokens.device)]

    def position_terms(self, logits: Tensor, x0: Tensor, x_t: Tensor, t, s_or_rate, time: str):
        """The process' NELBO term per position [B, L-1]: `step_loss` (time `discrete`) or
        `rate_loss`. Under `Absorbing` only -log p_θ(x0 | x_t) enters, so it comes from the
        fused cross-entropy instead of full log-probabilities."""
        if isinstance(self.process, Absorbing):
            nll = MaskedCrossEntropy.apply(logits, x0, self.mask_id)
            if time == "discrete":
                return self.process.step_loss_of_nll(nll, x_t, t, s_or_rate)
            return self.process.rate_loss_of_nll(nll, x_t, t, s_or_rate)
        log_probs = clean_log_probs(logits, self.mask_id)
        if time == "discrete":
            return self.process.step_loss(log_probs, x0, x_t, t, s_or_rate)
        return self.process.rate_loss(log_probs, x0, x_t, t, s_or_rate)

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
            width, _ = self.block_width(self.schedule(length - 1))
            block_start = (previous % width == 0) & (previous > 0)
            previous = torch.where(block_start, previous + length - 1, previous)
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
        """[2L-1, 2L-1]: BOS, then `masks.two_copy_block_diffusion` over the L-1 positions."""
        width, _ = self.block_width(self.schedule(length - 1))
        inner = masks.two_copy_block_diffusion(length - 1, width)
        mask = F.pad(inner, (1, 0, 1, 0), value=False)
        mask[:, 0] = True
        return mask.to(device)

    # -- NELBO ---------------------------------------------------------------------------------

    def count_terms(
        self, net, tokens: Tensor, draws: Tensor, generator, hidden: Tensor | None = None
    ) -> Tensor:
        """`time: count`: the continuous-time NELBO of a flat schedule with t integrated out.

        Given k masked positions out of C, ∫ Binomial(k; C, t) dt / t = 1 / k, so
        NELBO = E_{k ~ U{1..C}} E_{k random positions masked} [(C / k) Σ_masked term_i]:
        the same bound as MDLM's E_t[(1/t) Σ_masked term_i], without the 1/t weights whose
        variance stalls small-batch training (docs/math.md). With `hidden` [B, L-1] only those C
        positions are noised, the others stay clean: the bound on -log p(x_hidden | the rest).
        """
        x0 = tokens[:, 1:]
        hidden = torch.ones_like(x0, dtype=torch.bool) if hidden is None else hidden
        size = hidden.sum(-1)  # C
        count = (draws * size).floor().long() + 1  # k, 1..C
        scores = torch.rand(x0.shape, generator=generator, device=x0.device).masked_fill(~hidden, 2)
        threshold = scores.sort(-1).values.gather(-1, count[:, None] - 1)
        visible = getattr(self.process, "corrupt_visible", lambda x, g: x)(x0, generator)
        x_t = torch.where(scores <= threshold, self.mask_id, torch.where(hidden, visible, x0))
        ones = torch.ones_like(x0)
        logits = self.logits(net, tokens, x_t, hidden * (count / size)[:, None], ones)
        weight = (size / count)[:, None].float()
        loss = self.position_terms(logits, x0, x_t, ones.float(), weight, "count")
        return torch.where(hidden, loss, 0.0).sum(-1)

    def terms(self, net, tokens: Tensor, draws: Tensor, generator, hidden=None) -> Tensor:
        """Per-sequence NELBO estimate [B] from one draw per sequence (or per block)."""
        if self.options.time == "count":
            return self.count_terms(net, tokens, draws, generator, hidden)
        if hidden is not None:
            raise HdlmError(
                "the infilling NELBO needs diffusion.time=count (mdlm, eps-hybrid); this model "
                f"uses time={self.options.time}"
            )
        x0 = tokens[:, 1:]
        step, frac, weight = self.step_index(tokens, draws)
        t, s_or_rate = self.levels(tokens, step, frac)
        x_t = self.process.corrupt(x0, t, generator)
        logits = self.logits(net, tokens, x_t, t, step)
        loss = self.position_terms(logits, x0, x_t, t, s_or_rate, self.options.time)
        return weight * loss.sum(-1)

    def reconstruction(self, net, tokens: Tensor, generator, hidden=None) -> Tensor:
        """Continuous time only: the NELBO's term at t = 0+ (ε-hybrid's jump), per sequence
        (on the `hidden` positions only when given; the others stay clean)."""
        x0 = tokens[:, 1:]
        x_t = self.process.corrupt_visible(x0, generator)
        if hidden is not None:
            x_t = torch.where(hidden, x_t, x0)
        t = torch.zeros(x0.shape, device=x0.device)
        step = torch.full_like(x0, self.schedule(x0.shape[1]).num_steps)
        # `reconstruction_loss` is -log p_θ(x0 | x_{0+}): the fused cross-entropy computes it
        loss = MaskedCrossEntropy.apply(self.logits(net, tokens, x_t, t, step), x0, self.mask_id)
        return (loss if hidden is None else torch.where(hidden, loss, 0.0)).sum(-1)

    def draws(self, shape: tuple[int, ...], generator, device) -> Tensor:
        """Uniform draws in [0, 1), stratified along the batch (low variance, still unbiased)."""
        n = shape[0]
        offsets = torch.arange(n, device=device).view(n, *[1] * (len(shape) - 1))
        return (offsets + torch.rand(shape, generator=generator, device=device)) / n

    def draw_shape(self, tokens: Tensor) -> tuple[int, ...]:
        if self.options.attention == "two-copy":
            width, _ = self.block_width(self.schedule(tokens.shape[1] - 1))
            return (len(tokens), -(-(tokens.shape[1] - 1) // width))
        return (len(tokens),)

    def diffusion_terms(self, net, tokens: Tensor, generator) -> Tensor:
        """Per-sequence estimate of the NELBO without its reconstruction term, [B]."""
        draws = self.draws(self.draw_shape(tokens), generator, tokens.device)
        return self.terms(net, tokens, draws, generator)

    def loss(self, net, tokens: Tensor, generator) -> Tensor:
        """NELBO estimate per scored token, averaged over the batch (the training loss)."""
        if not self.needs_reconstruction:
            return self.diffusion_terms(net, tokens, generator).mean() / self.scored_tokens(tokens)
        return self.split_nelbo(net, tokens, generator).mean() / self.scored_tokens(tokens)

    def split_nelbo(self, net, tokens: Tensor, generator) -> Tensor:
        """Unbiased per-sequence NELBO D + R at the cost of one forward pass per sequence.

        A random subset of n = round(qB) rows (q = `reconstruction_fraction`, 1 <= n < B)
        estimates the reconstruction term R, the other rows the diffusion term D (stratified
        draws in random order), each reweighted by its inclusion probability p = n / B:

            Ĵ_b = 1[b ∈ rec] R̂_b / p + 1[b ∉ rec] D̂_b / (1 - p),    P(b ∈ rec) = p,

        so E[Ĵ_b] = E[R̂_b] + E[D̂_b], the NELBO of sequence b (docs/math.md §4). The count is
        fixed, so no shape depends on a random draw; a batch of one row pays both terms.
        """
        batch = len(tokens)
        if batch == 1:
            return self.diffusion_terms(net, tokens, generator) + self.reconstruction(
                net, tokens, generator
            )
        n_rec = min(max(round(self.options.reconstruction_fraction * batch), 1), batch - 1)
        p = n_rec / batch
        order = torch.randperm(batch, generator=generator, device=tokens.device)
        rec, diff = order[:n_rec], order[n_rec:]
        estimate = torch.empty(batch, device=tokens.device)
        estimate[rec] = self.reconstruction(net, tokens[rec], generator) / p
        estimate[diff] = self.diffusion_terms(net, tokens[diff], generator) / (1 - p)
        return estimate

    @property
    def needs_reconstruction(self) -> bool:
        return self.options.time != "discrete" and self.process.has_reconstruction

    def nelbo(
        self,
        net,
        tokens: Tensor,
        generator: torch.Generator | None = None,
        hidden: Tensor | None = None,
        samples: int | None = None,
    ) -> Tensor:
        """Per-sequence NELBO [B] in nats: every step summed when there are at most
        `samples` (default `eval_steps`), else `samples` stratified (low-discrepancy) draws of
        the step or t per sequence, draw k in [k/n, (k+1)/n) (a fixed seed keeps it
        reproducible). With `hidden` [B, L-1] (bool) it bounds -log p(x_hidden | the other
        positions): only the hidden positions are noised (infilling; `time: count` models)."""
        generator = generator or torch.Generator(tokens.device).manual_seed(0)
        budget = self.options.eval_steps if samples is None else samples
        if budget < 1:
            raise HdlmError(f"the number of Monte Carlo samples ({budget}) must be at least 1")
        shape = self.draw_shape(tokens)
        _, _, steps = self.step_index(tokens, torch.zeros(shape, device=tokens.device))
        exact = self.options.time == "discrete" and steps <= budget
        n = steps if exact else budget
        total = torch.zeros(len(tokens), device=tokens.device)
        for k in range(n):
            if exact:  # the midpoint of step k + 1
                draws = torch.full(shape, (k + 0.5) / steps, device=tokens.device)
            else:
                draws = (k + torch.rand(shape, generator=generator, device=tokens.device)) / n
            total += self.terms(net, tokens, draws, generator, hidden) / n
        if self.needs_reconstruction:
            total += self.reconstruction(net, tokens, generator, hidden)
        return total


def build_process(options, vocab_size: int, mask_id: int) -> NoiseProcess:
    """The noise process of a `DiffusionConfig`."""
    if options.process == "absorbing":
        return Absorbing(mask_id)
    if options.process == "uniform":
        return Uniform(vocab_size, mask_id)
    if options.process == "gamma-hybrid":
        sigma = SigmaSchedule.parse(options.sigma)
        return GammaHybrid(options.gamma, mask_id, vocab_size, sigma)
    return EpsHybrid(options.eps, mask_id, vocab_size)


# Families are presets of the diffusion section; `ar` is the plain next-token objective.
FAMILY_DEFAULTS = {
    "mdlm": {
        "schedule": "flat:1000",
        "process": "absorbing",
        "time": "count",
        "attention": "full",
    },
    "block-diffusion": {
        "schedule": "block:16:16",
        "process": "absorbing",
        "time": "discrete",
        "attention": "two-copy",
    },
    "slide": {
        "schedule": "slide:16:16",
        "process": "absorbing",
        "time": "discrete",
        "attention": "schedule",
    },
    "eps-hybrid": {
        "schedule": "flat:1000",
        "process": "eps-hybrid",
        "time": "count",
        "attention": "full",
    },
    "hyperschedule": {"process": "absorbing", "time": "discrete", "attention": "schedule"},
    "gamma-hybrid": {
        "schedule": "flat:1000",
        "process": "gamma-hybrid",
        "time": "continuous",
        "attention": "full",
    },
}
FAMILIES = {"ar": AutoregressiveObjective, **dict.fromkeys(FAMILY_DEFAULTS, DiffusionObjective)}


def build_objective(config, mask_id: int):
    """The objective of `config.family` (config validation has checked the name)."""
    return FAMILIES[config.family](config, mask_id)


class A3Objective:
    """Any-order, any-subset autoregression (`hdlm.a3`): -log p(x) = -Σ_k log p(x_{G_k} | x_{G_<k}).

    Training draws a grouping per sequence from the current curriculum stage (`at_step`, called
    by the trainer) and scores every position; `nelbo` is the exact NLL under `a3.eval_order` in
    groups of `a3.eval_group_size`. The network is `hdlm.model.a3.A3Transformer`.
    """

    name = "a3"
    default_sampler = "a3"

    def __init__(self, config, mask_id: int) -> None:
        from hdlm import a3

        self.config, self.options, self.mask_id = config, config.a3, mask_id
        self.stages = a3.stages(config.a3)
        self.current = self.stages[0]

    @property
    def network(self):
        from hdlm.model.a3 import A3Transformer

        return A3Transformer

    def at_step(self, step: int) -> str:
        """Switch to the curriculum stage of training step `step`; return its label."""
        from hdlm import a3

        self.current = a3.stage_at(self.stages, step)
        return self.current.label

    def loss(self, net, tokens: Tensor, generator: torch.Generator | None) -> Tensor:
        from hdlm import a3

        stage = self.current
        groups = a3.draw_groups(
            stage.grouping, *tokens.shape, stage.group_size, generator, tokens.device,
            self.options.mean_span,
        )  # fmt: skip
        return -a3.token_log_likelihood(net, tokens, groups, self.mask_id).mean()

    def nelbo(self, net, tokens: Tensor, hidden: Tensor | None = None, samples=None) -> Tensor:
        """Exact -log p(x) [B]; with `hidden` [B, L-1] (bool), exact -log p(x_hidden | the rest):
        the other positions first (left to right), then the hidden ones in `eval_order`.
        `samples` is ignored: nothing here is estimated."""
        from hdlm import a3

        groups = a3.eval_groups(self.options, tokens, hidden)
        per_token = a3.token_log_likelihood(net, tokens, groups, self.mask_id)
        return -(per_token if hidden is None else torch.where(hidden, per_token, 0.0)).sum(-1)

    @staticmethod
    def scored_tokens(tokens: Tensor) -> int:
        return tokens.shape[1] - 1


FAMILIES["a3"] = A3Objective


class ScoreEntropyObjective(DiffusionObjective):
    """SEDD-style score entropy for the γ-hybrid chain (`hdlm.gamma_hybrid`, docs/math.md §8).

    The hyperschedule NELBO of `DiffusionObjective` with the γ-hybrid's terms (continuous time:
    the diffusion-weighted denoising score entropy; discrete time: exact reverse-step KLs), plus
    the prior term KL(q(x_1 | x0) || p(x_1)), which is 0 unless σ(1) is finite. A true upper bound
    on the NLL of the τ-leaping sampler (discrete) or of the reverse chain (continuous).
    """

    default_sampler = "tweedie"

    def prior(self, tokens: Tensor) -> Tensor:
        """Per-sequence KL(q(x_1 | x0) || p(x_1)) [B] (a constant, no gradient)."""
        return self.process.prior_loss(tokens[:, 1:]).sum(-1)

    def loss(self, net, tokens: Tensor, generator) -> Tensor:
        prior = self.prior(tokens).mean() / self.scored_tokens(tokens)
        return super().loss(net, tokens, generator) + prior

    def nelbo(
        self, net, tokens: Tensor, generator=None, hidden: Tensor | None = None, samples=None
    ) -> Tensor:
        if hidden is not None:
            raise HdlmError("no infilling NELBO for gamma-hybrid yet; use a3, mdlm or eps-hybrid")
        return super().nelbo(net, tokens, generator, samples=samples) + self.prior(tokens)


FAMILIES["gamma-hybrid"] = ScoreEntropyObjective
