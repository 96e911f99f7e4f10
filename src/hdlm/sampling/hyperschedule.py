"""The hyperschedule-driven sampler: ancestral, ACS and remasking reverse steps with a KV cache.

Walk the steps s = 1..S of a hyperschedule T over the positions after BOS. At step s:

* settled positions (T[s-1, i] = 0, and the given ones: BOS, a prompt, the text around blanks)
  are final; their keys and values sit in the KV cache, committed group by group in the order
  they settled, so each one saw exactly what the training mask `masks.from_schedule` shows it.
  Models trained with full attention (flat, MDLM-style) saw clean tokens attend to every
  position, so for them the given tokens are instead recomputed with the active ones;
* active positions (T[s-1, i] > 0, T[s, i] < 1) are computed against the cache and each other;
  a masked one is revealed with probability p = (t - s) / t, its token drawn from p_θ(x0 | x_t);
* untouched positions (still fully noised) are not computed at all.

The reverse step itself is the process' (`denoiser.MaskingReverse.reverse_step`), with its
corrections of visible in-flight tokens (never of settled or given tokens): `acs` (HDLM's
Adaptive Correction Sampler) re-draws each with probability η (1 - p), `remask` (ReMDM) masks it
again. The model's input layout (attention, read-out, noise levels) is the denoiser's
`InputLayout`. `ScheduleWalker` is what every sampler that walks a hyperschedule declares (the
`schedule` and `steps` options); `MaskingSampler` the samplers of this loop (`ancestral`, `acs`,
`remask` in `sampling.samplers`).

`use_cache=False` runs the whole sequence every step with the equivalent attention mask: the
same tokens, the same random draws, logits equal to float tolerance — only slower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from hdlm.denoiser import Denoiser, MaskingReverse
from hdlm.errors import HdlmError
from hdlm.processes import CORRECTIONS
from hdlm.sampling.options import SCHEDULE, STEPS, TRACE, USE_CACHE
from hdlm.sampling.registry import Sampler
from hdlm.sampling.tokens import pick_tokens
from hdlm.sampling.trace import Trace
from hdlm.schedules import Hyperschedule, from_spec, parse_spec, position_states

DEFAULT_STEPS = 128  # steps of the flat schedule a flat-trained model walks unless told


def schedule_spec(denoiser: Denoiser, spec: str | None, steps: int | None) -> str:
    """The schedule to walk: `spec`, else the one the model was trained with (a flat one with
    `steps` (default 128) steps for flat-trained models, quenched AR for AR models). `steps`
    for any other schedule would be ignored, so it is an error."""
    if spec is None:
        spec = denoiser.layout.options.schedule  # ar: its twin's, quenched AR
        if parse_spec(spec).kind == "flat":
            return f"flat:{steps or DEFAULT_STEPS}"
    if steps is not None:
        raise HdlmError(
            f"--steps sets the steps of a flat schedule, but this sampler walks {spec}; "
            "give the steps in --schedule instead (e.g. flat:64, block:16:4)"
        )
    return spec


class ScheduleWalker(Sampler):
    """A sampler that walks a hyperschedule over the positions after BOS: `schedule` (default
    the model's own) or a flat one of `steps` steps (`schedule_spec`)."""

    def resolve(self, denoiser: Denoiser, options: dict[str, Any]) -> dict[str, Any]:
        steps = options.pop("steps")
        return options | {"schedule": schedule_spec(denoiser, options["schedule"], steps)}

    @staticmethod
    def walk(options: dict[str, Any], tokens: Tensor) -> Hyperschedule:
        """The resolved schedule over the positions after BOS of `tokens` [n, L]."""
        return from_spec(options["schedule"], tokens.shape[1] - 1)


class MaskingSampler(ScheduleWalker):
    """The samplers of this module's loop: the process' masking reverse step with `correction`
    (`Absorbing.reverse_step`) of strength `eta` where they declare it."""

    objectives = ("ar", "diffusion")
    processes = ("absorbing", "eps-hybrid")
    needs = MaskingReverse
    options = (SCHEDULE, STEPS, USE_CACHE, TRACE)
    correction: ClassVar[str]

    def run(self, denoiser, tokens, known, generator, options, pick, trace) -> Tensor:
        return sample_hyperschedule(
            denoiser, tokens, known, generator, self.walk(options, tokens), self.correction,
            options.get("eta", 0.0), options["use_cache"], trace, **pick,
        )  # fmt: skip


def check_schedule_length(schedule: Hyperschedule, length: int) -> None:
    if schedule.length != length - 1:
        raise HdlmError(
            f"schedule {schedule.name} has {schedule.length} positions, need {length - 1}"
        )


def attention_keys(schedule: Hyperschedule, fixed: Tensor) -> Tensor:
    """Commit order of every position after BOS: its settle step; prompt positions come before
    all others but keep their relative order. A settled position sees settled keys <= its own."""
    settle = schedule.settle_step
    return torch.where(fixed, settle - schedule.num_steps - 1, settle)


def full_mask(key: Tensor, settled: Tensor, computed: Tensor) -> Tensor:
    """[n, L, L] mask over all positions (BOS included) equal to what the cache shows (see
    masks.from_schedule): settled rows see settled keys <= their own, computed (in-flight) rows
    see settled and computed ones, the rest (untouched) see themselves."""
    by_key = key[None, :] <= key[:, None]
    visible = settled | computed
    rows = (settled[:, :, None] & settled[:, None, :] & by_key) | (
        computed[:, :, None] & visible[:, None, :]
    )
    return rows | torch.eye(len(key), dtype=torch.bool, device=key.device)


class NetworkView:
    """Computes the hidden states that predict the active positions, with or without the KV
    cache; `log_probs` turns the rows a step actually draws from into p_θ(x0 | x_t).

    Hidden states (after the final norm) are kept for every computed position, so a shifted
    read-out (position i - 1 predicts token i) can use a settled position's output directly.
    The read-out head runs only on the rows that need a token (see `sample_hyperschedule`).
    """

    def __init__(self, denoiser: Denoiser, tokens: Tensor, key: Tensor, use_cache: bool):
        self.denoiser, self.net = denoiser, denoiser.net
        layout = denoiser.layout
        self.conditioned, self.shift, self.layout = layout.conditioned, layout.shift, layout
        self.key = torch.cat((key.new_full((1,), torch.iinfo(key.dtype).min), key))  # BOS first
        n, length = tokens.shape
        # in the weights' dtype: float32 under autocast, bf16 for a model cast to bf16
        dtype = self.net.embed.weight.dtype
        self.hidden = torch.zeros(n, length, self.net.config.d_model, device=tokens.device,
                                  dtype=dtype)  # fmt: skip
        self.cache = self.net.new_cache(n, tokens.device) if use_cache else None

    def _run(self, tokens, index, levels, attn_mask=None, commit=False) -> None:
        """Forward the token positions `index` (after the cache), keeping their hidden states.
        `levels` [n, L] is read only by noise-level conditioned models (None otherwise)."""
        self.hidden[:, index] = self.net(
            tokens[:, index],
            positions=index,
            cache=self.cache,
            commit=commit,
            attn_mask=attn_mask,
            causal=False,
            noise_level=levels[:, index] if self.conditioned else None,
            return_hidden=True,
        ).to(self.hidden.dtype)

    def commit(self, tokens: Tensor, index: Tensor) -> None:
        """Cached path: append the settled token positions `index` (host), each seeing the cache
        and the positions of `index` whose key is no larger than its own."""
        if self.cache is None or len(index) == 0:
            return
        device = tokens.device
        group = self.key[index]
        seen = torch.ones(len(index), self.cache.length, dtype=torch.bool)
        within = group[None, :] <= group[:, None]
        mask = torch.cat((seen, within), 1).to(device)
        levels = torch.zeros(tokens.shape, device=device) if self.conditioned else None
        self._run(tokens, index.to(device), levels, mask, commit=True)

    def hidden_at(self, tokens, levels, settled, computed, targets) -> Tensor:
        """Run the network for one step; the hidden states that predict the token positions
        `targets` [A] (on the host), [n, A, d].

        `settled` and `computed` [L] (host booleans) cover every position, BOS included: the
        computed ones run this step, seeing the settled ones and each other. When every position
        is computed (a flat schedule) that is full attention: no mask at all, SDPA's fast path."""
        read = targets - self.shift  # [A], or [n, A] for the shifted-copy read-out
        if self.layout.copy:
            read = self.layout.read_rows(tokens[:, 1:]).cpu()[:, targets - 1]
        if not (settled | computed)[read].all():
            raise HdlmError(
                "a shifted read-out needs the position before each active one computed; "
                "use a schedule that settles left to right"
            )
        device = tokens.device
        if self.cache is None:
            every = torch.arange(tokens.shape[1], device=device)
            mask = None
            if not computed.all():
                seen = full_mask(self.key, settled[None], computed[None])
                mask = seen[:, None].to(device)
            self._run(tokens, every, levels, attn_mask=mask)
        elif computed[read].any():  # some read-out sits on an in-flight token
            self._run(tokens, computed.nonzero()[:, 0].to(device), levels)
        if read.dim() == 1:
            return self.hidden[:, read.to(device)]
        index = read.to(device)[..., None].expand(-1, -1, self.hidden.shape[-1])
        return self.hidden.gather(1, index)

    def log_probs(self, hidden: Tensor) -> Tensor:
        """log p_θ(x0 | x_t) [..., V] (MASK excluded) of hidden states [..., d]."""
        return self.denoiser.log_probs(hidden)


@torch.no_grad()
def sample_hyperschedule(
    denoiser: Denoiser,
    tokens: Tensor,
    known: Tensor,
    generator: torch.Generator | None,
    schedule: Hyperschedule,
    correction: str = "none",
    eta: float = 0.015,
    use_cache: bool = True,
    trace: Trace | None = None,
    reverse_step=None,
    **pick,
) -> Tensor:
    """Fill the positions of `tokens` [n, L] where `known` [L] is False (BOS, a prompt or the
    text around blanks are known) by walking `schedule`. `reverse_step(current, t, s, propose,
    generator)` replaces the process' own step with `correction` (e.g. `EpsHybrid.chain_step`)."""
    (n, length), device, mask_id = tokens.shape, tokens.device, denoiser.mask_id
    check_schedule_length(schedule, length)
    if correction not in CORRECTIONS:
        raise HdlmError(
            f"unknown correction '{correction}'; choose one of {', '.join(CORRECTIONS)}"
        )
    tokens = torch.where(known, tokens, mask_id)
    # The bookkeeping (which positions are active, settled, given) lives on the host: it is
    # decided by the schedule alone, so it needs no device round trip per step.
    fixed = known[1:].cpu()
    table = schedule.table.masked_fill(fixed, 0.0)
    levels_on_device = table.to(device)
    process = denoiser.process

    def masking_step(current, t, s, propose, generator):
        return process.reverse_step(current, t, s, propose, generator, correction, eta)

    step = reverse_step or masking_step
    # Given tokens take the role clean tokens had in training: under full attention (flat,
    # MDLM-style training) they, and BOS, see and are seen by every position, so they are
    # recomputed with the active ones at every step; otherwise they are settled, cached once.
    context = F.pad(fixed, (1, 0), value=True) & denoiser.layout.full_attention  # [L]
    view = NetworkView(denoiser, tokens, attention_keys(schedule, fixed & ~context[1:]), use_cache)
    view.commit(tokens, (known.cpu() & ~context).nonzero()[:, 0])
    hidden, changed, last_active = None, True, None
    for plan in step_plans(table, context):
        active, targets = plan.active, plan.targets
        # MDLM's trick: when no input changed since the last step, neither did the output
        same_inputs = not changed and not view.conditioned and torch.equal(active, last_active)
        if not same_inputs:
            levels = None
            if view.conditioned:
                levels = F.pad(levels_on_device[plan.step - 1], (1, 0)).expand(n, -1)
            hidden = view.hidden_at(tokens, levels, plan.settled, plan.computed, targets)
        on_device = targets.to(device)
        current = tokens[:, on_device]

        def propose(needed: Tensor, hidden: Tensor = hidden) -> Tensor:
            # only the rows that take a new token go through the read-out and the draw
            return pick_tokens(view.log_probs(hidden[needed]), generator, **pick)

        updated, events = step(current, plan.t.to(device), plan.s.to(device), propose, generator)
        changed = len(plan.newly_settled) > 0 or bool((updated != current).any())
        tokens[:, on_device] = updated
        last_active = active
        if plan.step < schedule.num_steps:
            view.commit(tokens, plan.newly_settled)
        if trace is not None:
            record(trace, tokens, active, events)
    return tokens


@dataclass(frozen=True)
class StepPlan:
    """What step `step` of a walk does, decided by the schedule alone (host tensors): its
    `active` positions [L-1] (bool) and their token indices `targets` [A] (BOS = 0), their
    levels before and after (`t`, `s` [A]), which positions are `settled` (cached context) and
    `computed` (run this step) [L], and the token indices settling at it, `newly_settled` [K]."""

    step: int
    active: Tensor
    targets: Tensor
    t: Tensor
    s: Tensor
    settled: Tensor
    computed: Tensor
    newly_settled: Tensor


def step_plans(table: Tensor, context: Tensor) -> list[StepPlan]:
    """The plan of every step of `table` [S+1, L-1] that moves some position, computed for all
    steps at once (a handful of tensor ops instead of a dozen per step on the hot path);
    `context` [L]: positions computed at every step (BOS and given tokens under full
    attention)."""
    before, after = table[:-1], table[1:]
    states = position_states(before, after)  # each [S, L-1]
    settled = F.pad(states.settled, (1, 0), value=True) & ~context
    computed = F.pad(states.active, (1, 0), value=False) | context
    counts = states.active.sum(1).tolist()
    targets = (states.active.nonzero()[:, 1] + 1).split(counts)
    t, s = before[states.active].split(counts), after[states.active].split(counts)
    newly = states.newly_settled
    settling = (newly.nonzero()[:, 1] + 1).split(newly.sum(1).tolist())
    return [
        StepPlan(
            k + 1, states.active[k], targets[k], t[k], s[k], settled[k], computed[k], settling[k]
        )  # fmt: skip
        for k in range(len(counts))
        if counts[k]
    ]


def record(trace: Trace, tokens: Tensor, active: Tensor, events: dict[str, Tensor]) -> None:
    """Add a step to `trace`: `events` [n, A] happened at the `active` [L-1] positions."""
    full = {}
    for name, happened in events.items():
        full[name] = torch.zeros(tokens.shape[0], tokens.shape[1] - 1, dtype=torch.bool)
        full[name][:, active.cpu()] = happened.cpu()
    trace.add(tokens, **full)
