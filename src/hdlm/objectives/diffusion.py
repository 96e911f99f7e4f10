"""The NELBO of a hyperschedule diffusion (schedule x process x attention x read-out; HDLM), and
SEDD-style score entropy for the γ-hybrid."""

from __future__ import annotations

import torch
from torch import Tensor

from hdlm.errors import HdlmError
from hdlm.objectives.base import Objective
from hdlm.objectives.layout import InputLayout
from hdlm.processes import Absorbing, build_process
from hdlm.readout import MaskedCrossEntropy, clean_log_probs


class DiffusionObjective(Objective):
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

    def __init__(self, config, mask_id: int) -> None:
        super().__init__(config, mask_id)
        self.options = config.diffusion
        self.process = build_process(self.options, config.model.vocab_size, mask_id)
        self.layout = InputLayout(self.options, config.model.time_conditioning, mask_id)

    def at_step(self, step: int) -> str | None:
        """Attention-mask annealing (`diffusion.mask_anneal_steps`), the only training stages."""
        return self.layout.anneal(step)

    # -- which step, which levels -------------------------------------------------------------

    def step_index(self, tokens: Tensor, draws: Tensor) -> tuple[Tensor, Tensor, int]:
        """Per-position step numbers [B, L-1] and fractions in the step [B, L-1] from uniform
        `draws` in [0, 1) ([B] for one step per sequence, [B, n_blocks] for two-copy), and the
        number of steps each draw stands for (S, or K per block)."""
        schedule = self.layout.schedule(tokens.shape[1] - 1)
        if self.options.attention == "two-copy":
            width, steps = self.layout.block_width()
            offset = self.layout.block_offset
            block_of = (torch.arange(schedule.length, device=tokens.device) + offset) // width
            position = draws[:, block_of] * steps
            return block_of * steps + position.floor().long() + 1, position.frac(), steps
        position = (draws * schedule.num_steps)[:, None].expand(-1, schedule.length)
        return position.floor().long() + 1, position.frac(), schedule.num_steps

    def levels(self, tokens: Tensor, step: Tensor, frac: Tensor) -> tuple[Tensor, Tensor]:
        """(t, s) per position: T[step-1] and T[step] in discrete time; in continuous time the
        level at `frac` of the way through the step and its rate of decrease per step."""
        table = self.layout.schedule(tokens.shape[1] - 1).table.to(tokens.device)
        before, after = table.gather(0, step - 1), table.gather(0, step)
        if self.options.time == "discrete":
            return before, after
        return before + frac * (after - before), before - after

    def position_terms(self, logits: Tensor, x0: Tensor, x_t: Tensor, t, s_or_rate, time: str):
        """The process' NELBO term per position [B, L-1]: `step_loss` (time `discrete`) or
        `rate_loss`. Under `Absorbing` only -log p_θ(x0 | x_t) enters, so it comes from the
        fused cross-entropy instead of full log-probabilities; in continuous time the hybrids
        fuse theirs too (`rate_loss_of_logits`)."""
        if isinstance(self.process, Absorbing):
            nll = MaskedCrossEntropy.apply(logits, x0, self.mask_id)
            if time == "discrete":
                return self.process.step_loss_of_nll(nll, x_t, t, s_or_rate)
            return self.process.rate_loss_of_nll(nll, x_t, t, s_or_rate)
        if time == "discrete":
            return self.process.step_loss(
                clean_log_probs(logits, self.mask_id), x0, x_t, t, s_or_rate
            )
        return self.process.rate_loss_of_logits(logits, x0, x_t, t, s_or_rate)

    # -- NELBO ---------------------------------------------------------------------------------

    def visible_terms(self, logits: Tensor, x0: Tensor, x_t: Tensor, t: Tensor, lam: float):
        """HDLM's extra training term (`diffusion.visible_weight` = λ > 0; not part of the
        NELBO): at visible positions λ w -log p_θ(x0 | x_t) / (1 - t), w = 1 - ε where x_t is
        corrupted and ε where it is clean (`EpsHybrid.visible_weights`), per position [B, L-1]."""
        nll = MaskedCrossEntropy.apply(logits, x0, self.mask_id)
        return self.process.visible_weights(x0, x_t, t, lam) * nll

    def count_terms(
        self,
        net,
        tokens: Tensor,
        draws: Tensor,
        generator,
        hidden: Tensor | None = None,
        visible_weight: float = 0.0,
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
        visible = self.process.corrupt_visible(x0, generator)
        x_t = torch.where(scores <= threshold, self.mask_id, torch.where(hidden, visible, x0))
        ones = torch.ones_like(x0)
        logits = self.layout.logits(net, tokens, x_t, hidden * (count / size)[:, None], ones)
        weight = (size / count)[:, None].float()
        loss = self.position_terms(logits, x0, x_t, ones.float(), weight, "count")
        if visible_weight:  # t = k / C: the masked share
            t = (count / size)[:, None].expand_as(loss)
            loss = loss + self.visible_terms(logits, x0, x_t, t, visible_weight)
        return torch.where(hidden, loss, 0.0).sum(-1)

    def terms(
        self, net, tokens: Tensor, draws: Tensor, generator, hidden=None, visible_weight=0.0
    ) -> Tensor:
        """Per-sequence NELBO estimate [B] from one draw per sequence (or per block); with
        `visible_weight` > 0 plus HDLM's visible-position training term (`visible_terms`)."""
        if self.options.time == "count":
            return self.count_terms(net, tokens, draws, generator, hidden, visible_weight)
        if hidden is not None:
            raise HdlmError(
                "the infilling NELBO needs diffusion.time=count (mdlm, eps-hybrid); this model "
                f"uses time={self.options.time}"
            )
        x0 = tokens[:, 1:]
        step, frac, weight = self.step_index(tokens, draws)
        t, s_or_rate = self.levels(tokens, step, frac)
        x_t = self.process.corrupt(x0, t, generator)
        logits = self.layout.logits(net, tokens, x_t, t, step)
        loss = weight * self.position_terms(logits, x0, x_t, t, s_or_rate, self.options.time)
        if visible_weight:  # an expectation over the level itself: no step weight
            loss = loss + self.visible_terms(logits, x0, x_t, t, visible_weight)
        return loss.sum(-1)

    def reconstruction(self, net, tokens: Tensor, generator, hidden=None) -> Tensor:
        """Continuous time only: the NELBO's term at t = 0+ (ε-hybrid's jump), per sequence
        (on the `hidden` positions only when given; the others stay clean)."""
        x0 = tokens[:, 1:]
        x_t = self.process.corrupt_visible(x0, generator)
        if hidden is not None:
            x_t = torch.where(hidden, x_t, x0)
        t = torch.zeros(x0.shape, device=x0.device)
        step = torch.full_like(x0, self.layout.schedule(x0.shape[1]).num_steps)
        # `reconstruction_loss` is -log p_θ(x0 | x_{0+}): the fused cross-entropy computes it
        loss = MaskedCrossEntropy.apply(
            self.layout.logits(net, tokens, x_t, t, step), x0, self.mask_id
        )
        return (loss if hidden is None else torch.where(hidden, loss, 0.0)).sum(-1)

    def draws(self, shape: tuple[int, ...], generator, device) -> Tensor:
        """Uniform draws in [0, 1), stratified along the batch (low variance, still unbiased)."""
        n = shape[0]
        offsets = torch.arange(n, device=device).view(n, *[1] * (len(shape) - 1))
        return (offsets + torch.rand(shape, generator=generator, device=device)) / n

    def draw_shape(self, tokens: Tensor) -> tuple[int, ...]:
        if self.options.attention == "two-copy":
            width, _ = self.layout.block_width()
            return (len(tokens), -(-(tokens.shape[1] - 1 + self.layout.block_offset) // width))
        return (len(tokens),)

    def diffusion_terms(self, net, tokens: Tensor, generator, visible_weight=0.0) -> Tensor:
        """Per-sequence estimate of the NELBO without its reconstruction term, [B] (plus the
        visible-position training term when `visible_weight` > 0)."""
        draws = self.draws(self.draw_shape(tokens), generator, tokens.device)
        return self.terms(net, tokens, draws, generator, visible_weight=visible_weight)

    def loss(self, net, tokens: Tensor, generator) -> Tensor:
        """NELBO estimate per scored token, averaged over the batch (the training loss), plus
        HDLM's visible-position term when `diffusion.visible_weight` > 0."""
        lam = self.options.visible_weight
        if not self.needs_reconstruction:
            estimate = self.diffusion_terms(net, tokens, generator, lam)
        else:
            estimate = self.split_nelbo(net, tokens, generator, lam)
        return estimate.mean() / self.scored_tokens(tokens)

    def split_nelbo(self, net, tokens: Tensor, generator, visible_weight: float = 0.0) -> Tensor:
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
            return self.diffusion_terms(net, tokens, generator, visible_weight) + (
                self.reconstruction(net, tokens, generator)
            )
        n_rec = min(max(round(self.options.reconstruction_fraction * batch), 1), batch - 1)
        p = n_rec / batch
        order = torch.randperm(batch, generator=generator, device=tokens.device)
        rec, diff = order[:n_rec], order[n_rec:]
        estimate = torch.empty(batch, device=tokens.device)
        estimate[rec] = self.reconstruction(net, tokens[rec], generator) / p
        diffusion = self.diffusion_terms(net, tokens[diff], generator, visible_weight)
        estimate[diff] = diffusion / (1 - p)
        return estimate

    @property
    def needs_reconstruction(self) -> bool:
        return self.options.time != "discrete" and self.process.has_reconstruction

    def nelbo(
        self,
        net,
        tokens: Tensor,
        hidden: Tensor | None = None,
        samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sequence NELBO [B] in nats: the sum of `nelbo_terms`. With `hidden` [B, L-1]
        (bool) it bounds -log p(x_hidden | the other positions): only the hidden positions are
        noised (infilling; `time: count` models)."""
        return sum(self.nelbo_terms(net, tokens, hidden, samples, generator).values())

    def nelbo_terms(
        self,
        net,
        tokens: Tensor,
        hidden: Tensor | None = None,
        samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """The NELBO's terms per sequence [B] in nats: `diffusion` (the reverse steps, or the
        integral over t in (0, 1]: every step summed when there are at most `samples` (default
        `eval_steps`), else `samples` stratified (low-discrepancy) draws of the step or t per
        sequence, draw k in [k/n, (k+1)/n); a fixed seed keeps it reproducible),
        `reconstruction` (the ε-hybrid's term at t = 0+, 0 otherwise) and `prior`
        (KL(q(x_1 | x0) || p(x_1)), 0 unless a γ-hybrid's σ(1) is finite)."""
        generator = generator or torch.Generator(tokens.device).manual_seed(0)
        budget = self.options.eval_steps if samples is None else samples
        if budget < 1:
            raise HdlmError(f"the number of Monte Carlo samples ({budget}) must be at least 1")
        shape = self.draw_shape(tokens)
        _, _, steps = self.step_index(tokens, torch.zeros(shape, device=tokens.device))
        exact = self.options.time == "discrete" and steps <= budget
        n = steps if exact else budget
        diffusion = torch.zeros(len(tokens), device=tokens.device)
        for k in range(n):
            if exact:  # the midpoint of step k + 1
                draws = torch.full(shape, (k + 0.5) / steps, device=tokens.device)
            else:
                draws = (k + torch.rand(shape, generator=generator, device=tokens.device)) / n
            diffusion += self.terms(net, tokens, draws, generator, hidden) / n
        reconstruction = torch.zeros_like(diffusion)
        if self.needs_reconstruction:
            reconstruction = self.reconstruction(net, tokens, generator, hidden)
        return {
            "diffusion": diffusion,
            "reconstruction": reconstruction,
            "prior": torch.zeros_like(diffusion),
        }


class ScoreEntropyObjective(DiffusionObjective):
    """SEDD-style score entropy for the γ-hybrid chain (`hdlm.gamma_hybrid`, docs/math.md §8).

    The hyperschedule NELBO of `DiffusionObjective` with the γ-hybrid's terms (continuous time:
    the diffusion-weighted denoising score entropy; discrete time: exact reverse-step KLs), plus
    the prior term KL(q(x_1 | x0) || p(x_1)), which is 0 unless σ(1) is finite. A true upper bound
    on the NLL of the τ-leaping sampler (discrete) or of the reverse chain (continuous).
    """

    def prior(self, tokens: Tensor) -> Tensor:
        """Per-sequence KL(q(x_1 | x0) || p(x_1)) [B] (a constant, no gradient)."""
        return self.process.prior_loss(tokens[:, 1:]).sum(-1)

    def loss(self, net, tokens: Tensor, generator) -> Tensor:
        prior = self.prior(tokens).mean() / self.scored_tokens(tokens)
        return super().loss(net, tokens, generator) + prior

    def nelbo_terms(
        self, net, tokens: Tensor, hidden: Tensor | None = None, samples=None, generator=None
    ) -> dict[str, Tensor]:
        if hidden is not None:
            raise HdlmError("no infilling NELBO for gamma-hybrid yet; use a3, mdlm or eps-hybrid")
        terms = super().nelbo_terms(net, tokens, samples=samples, generator=generator)
        return terms | {"prior": self.prior(tokens).to(terms["diffusion"].dtype)}
