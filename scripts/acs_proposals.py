"""What ACS re-draws a visible token from: the read-out at visible positions of a diffusion run.

    python3 scripts/acs_proposals.py RUN [RUN ...] [--blocks 64] [--levels 0 0.25 0.5 0.75]

ACS re-draws a visible token from the model's output at that position. For each run and masked
share t, on the first --blocks test blocks of the run's corpus (each position masked with
probability t, the rest left clean), it prints over the visible positions:

* keep: mean p_θ(x^i | x_t), the chance that a re-draw puts the same token back;
* argmax: the share of visible positions whose most likely token is the token itself.

A model whose visible outputs are trained at every level (HDLM's λ term,
`diffusion.visible_weight`) keeps its correct tokens; one trained on the NELBO alone is trained
there only at t = 0+ (the ε-hybrid's reconstruction) or not at all (MDLM), and its re-draws
replace correct tokens (docs/results.md, issue 20).
"""

from __future__ import annotations

import argparse

import torch

from hdlm.data import prepare_data
from hdlm.model import load


def visible_readout(run: str, blocks: int, levels: list[float]) -> list[tuple[float, float]]:
    """(keep, argmax) of `run`'s read-out at visible positions, one pair per masked share."""
    lm = load(run).eval()
    tokens = torch.as_tensor(prepare_data(lm.config.data, lm.tokenizer).blocks["test"][:blocks])
    x0 = tokens[:, 1:]
    generator = torch.Generator().manual_seed(0)
    out = []
    for t in levels:
        masked = torch.rand(x0.shape, generator=generator) < t
        x_t = torch.where(masked, lm.tokenizer.mask_id, x0)
        level = torch.full(x0.shape, t)
        with torch.no_grad():
            log_probs = lm.objective.layout.log_probs(
                lm.net, tokens, x_t, level, torch.ones_like(x0)
            )
        own = log_probs.gather(-1, x0[..., None]).squeeze(-1).exp()
        out.append(
            (
                own[~masked].mean().item(),
                (log_probs.argmax(-1) == x0)[~masked].float().mean().item(),
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="diffusion run directories or checkpoints")
    parser.add_argument("--blocks", type=int, default=64, help="test blocks (default 64)")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75])
    args = parser.parse_args()
    print("| run | " + " | ".join(f"t = {t}: keep / argmax" for t in args.levels) + " |")
    print("|---" * (len(args.levels) + 1) + "|")
    for run in args.runs:
        cells = [
            f"{keep:.3f} / {top:.3f}"
            for keep, top in visible_readout(run, args.blocks, args.levels)
        ]
        print(f"| {run} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
