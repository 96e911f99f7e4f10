"""Training-step cost of mdlm, eps-hybrid and gamma-hybrid: this tree against an older one.

    git worktree add --detach /tmp/old df5d350      # the tree before the fused hybrid losses
    python benchmarks/hybrid_loss_ab.py --old /tmp/old/src [--rounds 3]

Each case is a fresh process that imports one tree (`PYTHONPATH`), builds the family's random
network at a shape (4 × 192 at L = 128, B = 32: the tiny configs; 4 × 512 at L = 256, B = 8: the
bench shape; V = 4097), and times four training steps (forward + backward of the objective's
loss, bf16 autocast, one thread, CPU time), keeping the median of the last three; cases are
interleaved round by round and the median over rounds is printed (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SHAPES = ((192, 4, 4, 128, 32), (512, 4, 8, 256, 8))  # d_model, layers, heads, L, B
FAMILIES = ("mdlm", "eps-hybrid", "gamma-hybrid")
VOCAB = 4097


def time_step(family: str, d_model: int, layers: int, heads: int, length: int, batch: int):
    """CPU seconds of one training step of `family` at this shape (run in a child process)."""
    import dataclasses
    import time

    import torch

    from hdlm.config import RunConfig, complete
    from hdlm.model import Transformer
    from hdlm.objectives import build_objective

    torch.set_num_threads(1)
    config = RunConfig(family=family)
    config.data.seq_len = length
    config.model = dataclasses.replace(
        config.model, vocab_size=VOCAB, max_len=max(length, 256), n_layers=layers,
        n_heads=heads, d_model=d_model,
    )  # fmt: skip
    config = complete(config)
    torch.manual_seed(0)
    net, objective = Transformer(config.model), build_objective(config, VOCAB - 1)
    tokens = torch.randint(0, VOCAB - 1, (batch, length))
    tokens[:, 0] = 0
    times = []
    for step in range(4):
        start = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = objective.loss(net, tokens, torch.Generator().manual_seed(step))
        loss.backward()
        times.append(time.process_time() - start)
    return statistics.median(times[1:])


def run_case(tree: str, family: str, shape: tuple[int, ...]) -> float:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--case", family, *map(str, shape)]
    return json.loads(subprocess.run(command, env=env, capture_output=True, text=True,
                                     check=True).stdout)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", help="the older tree's src directory (required)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", nargs=6, help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(time_step(args.case[0], *map(int, args.case[1:]))))
        return
    if not args.old or not (Path(args.old) / "hdlm").is_dir():
        parser.error(f"--old {args.old}: give the src directory of an older hdlm checkout")
    trees = {"before": args.old, "after": str(Path(__file__).resolve().parents[1] / "src")}
    times: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for shape in SHAPES:
            for family in FAMILIES:
                for name, tree in trees.items():
                    times.setdefault((shape, family, name), []).append(
                        run_case(tree, family, shape)
                    )
    print("| shape | family | before (s/step) | after (s/step) | speed-up | after / mdlm |")
    print("|---|---|---|---|---|---|")
    for shape in SHAPES:
        mdlm = statistics.median(times[(shape, "mdlm", "after")])
        for family in FAMILIES:
            before, after = (statistics.median(times[(shape, family, n)]) for n in trees)
            label = f"{shape[1]} × {shape[0]}, L = {shape[3]}, B = {shape[4]}"
            print(f"| {label} | {family} | {before:.3f} | {after:.3f} | {before / after:.2f} | "
                  f"{after / mdlm:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
