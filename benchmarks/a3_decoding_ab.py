"""A3 decoding speed of this tree against an older one (and AR), side by side in one process.

    git archive 2846602 src/hdlm | tar -x -C /tmp/old      # the tree to compare with
    mv /tmp/old/src/hdlm /tmp/old/hdlm_old
    grep -rl hdlm /tmp/old/hdlm_old | xargs sed -i -E \\
        's/\\bfrom hdlm\\./from hdlm_old./g; s/\\bfrom hdlm import/from hdlm_old import/g'
    OMP_NUM_THREADS=1 PYTHONPATH=src:/tmp/old python benchmarks/a3_decoding_ab.py --length 256

The old tree is imported as the package `hdlm_old`; both decoders get the same random A3 network
(d_model 256, 4 layers, 4 heads, V = 4096, `hdlm bench sample`'s size) and decode one sample of
`--length` tokens from BOS under bf16 autocast; cases are interleaved round by round and timed
by CPU time (`hardware.clock`), the median is printed with the ratio to AR and new/old.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from hdlm.experiments import bench
from hdlm.hardware import autocast, clock
from hdlm.sampling.a3 import decode
from hdlm.sampling.ar import sample_ar

CASES = (("left-to-right", 1), ("left-to-right", 4), ("confidence", 1), ("confidence", 4))
SIZE = {"vocab_size": 4096, "n_layers": 4, "d_model": 256, "n_heads": 4}


def decoders(length: int):
    """{name: function(length) -> tokens} for AR and every (tree, order, group size)."""
    from hdlm_old.model.a3 import A3Transformer as OldA3
    from hdlm_old.sampling.a3 import decode as old_decode

    cpu = torch.device("cpu")
    a3, ar = (bench.language_model(f, SIZE, length, cpu).eval() for f in ("a3", "ar"))
    old_net = OldA3(a3.net.config).eval()
    old_net.load_state_dict(a3.net.state_dict())
    mask, bos = a3.tokenizer.mask_id, a3.tokenizer.bos_id

    def start(n: int):
        tokens = torch.full((1, n), mask)
        tokens[:, 0] = bos
        return tokens, torch.arange(n) < 1, torch.Generator().manual_seed(0)

    def ar_run(n):
        tokens, _, generator = start(n)
        return sample_ar(ar.net, tokens[:, :1], n, generator, mask)

    def a3_run(fn, net, order: str, k: int):
        def run(n):
            tokens, known, generator = start(n)
            return fn(net, tokens, known, mask, generator, order, k)

        return run

    runs = {"ar (KV cache)": ar_run}
    for order, k in CASES:
        for tree, fn, net in (("old", old_decode, old_net), ("new", decode, a3.net)):
            runs[f"a3 {order} g={k} ({tree})"] = a3_run(fn, net, order, k)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs, now = decoders(args.length), clock(torch.device("cpu"))
    times: dict[str, list[float]] = {name: [] for name in runs}
    with autocast(torch.device("cpu"), "bf16"), torch.no_grad():
        for run in runs.values():
            run(32)  # warm up
        for _ in range(args.rounds):
            for name, run in runs.items():
                begin = now()
                run(args.length)
                times[name].append(now() - begin)
    speed = {name: (args.length - 1) / statistics.median(t) for name, t in times.items()}
    print(f"L={args.length}, median of {args.rounds} rounds\n| case | tokens/s | vs ar |")
    print("|---|---|---|")
    for name, value in speed.items():
        print(f"| {name} | {value:,.1f} | {value / speed['ar (KV cache)']:.2f} |")
    for order, k in CASES:
        ratio = speed[f"a3 {order} g={k} (new)"] / speed[f"a3 {order} g={k} (old)"]
        print(f"new/old {order} g={k}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
