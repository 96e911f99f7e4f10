"""Training cost of A3 (two-stream) relative to AR on the same backbone, measured side by side.

    python benchmarks/a3_cost.py [--config configs/ar-tiny.yaml] [--steps 6] [--device cpu]

Both models get the config's backbone, batch size and sequence length and a random batch; each
timed step is forward + backward + AdamW, the two families interleaved so that load on the
machine affects both alike. Prints training tokens/s of each and the ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from hdlm.config import load_config
from hdlm.model import Transformer
from hdlm.objectives import build_objective
from hdlm.train import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/ar-tiny.yaml")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per family")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grouping", default="random", help="A3 training grouping")
    parser.add_argument("--group-size", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)
    base = load_config(args.config)
    base.model.vocab_size = args.vocab
    batch = args.batch_size or base.train.batch_size
    runs = {}
    for family in ("ar", "a3"):
        config = dataclasses.replace(base, family=family)
        config.a3 = dataclasses.replace(
            config.a3, grouping=args.grouping, group_size=args.group_size
        )
        objective = build_objective(config, args.vocab - 1)
        torch.manual_seed(0)
        net = getattr(objective, "network", Transformer)(config.model).to(device).train()
        runs[family] = (net, objective, make_optimizer(net, config.train), [])
    tokens = torch.randint(0, args.vocab - 1, (batch, base.data.seq_len), device=device)
    tokens[:, 0] = 0
    generator = torch.Generator(device).manual_seed(0)
    for step in range(args.steps + 1):  # step 0 warms up
        for net, objective, optimizer, times in runs.values():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = objective.loss(net, tokens, generator)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step > 0:
                times.append(time.perf_counter() - start)
    speeds = {}
    for family, (*_, times) in runs.items():
        median = sorted(times)[len(times) // 2]
        speeds[family] = batch * base.data.seq_len / median
        print(f"{family}: {speeds[family]:,.0f} training tokens/s (median of {len(times)} steps)")
    print(f"A3/AR cost ratio: {speeds['ar'] / speeds['a3']:.2f}x the time per token")


if __name__ == "__main__":
    main()
