"""Import benchmark: `hdlm import` of a randomly initialised model of Llama-3.2-1B's shape.

transformers writes the model (save_pretrained, bf16, as Meta ships it: one model.safetensors, or
shards with --max-shard-size) next to a tokenizer.json of Llama-3's size (128,000 tokens and 256
special ones, <|reserved_special_token_N|> among them); then `hdlm import` runs in a child process
and we report its wall time and peak resident memory (ru_maxrss, which counts memory-mapped file
pages too) against the checkpoint's size: the import reads tensors straight into one preallocated
copy of the model, so the peak must stay under 1.5x the checkpoint. --check also compares the
imported model's logits with transformers' (needs ~12 GB of RAM). Results go to
results/bench/import.{json,md}.

    PYTHONPATH=src python3 scripts/bench-import.py [--max-shard-size none 500MB] [--check]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_3_2_1B = {
    "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
    "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001,
}  # fmt: skip


def write_tokenizer(directory: Path) -> None:
    """A byte-level BPE vocabulary of Llama-3's size (no merges: the size is what matters)."""
    import tokenizers

    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab.update({f"t{i}": i for i in range(len(vocab), 128000)})
    hf = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    specials += [f"<|reserved_special_token_{i}|>" for i in range(254)]
    hf.add_special_tokens(specials)
    hf.save(str(directory / "tokenizer.json"))
    roles = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(roles))


def write_model(directory: Path, max_shard_size: str | None) -> None:
    """Save a random bf16 model of Llama-3.2-1B's shape and its tokenizer."""
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(**LLAMA_3_2_1B)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    options = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(directory, **options)
    write_tokenizer(directory)


def check_logits(source: Path, out: Path) -> None:
    """Print the largest |logit difference| between the import and transformers (fp32)."""
    import torch
    import transformers

    import hdlm

    tokens = torch.randint(0, 128000, (1, 16))
    lm = hdlm.load(out)
    with torch.no_grad():
        ours = lm.net(tokens)
    del lm
    model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        theirs = model(tokens).logits
    print(float((ours[..., :128256] - theirs).abs().max()))


def child(arguments: list[str]) -> dict:
    """Run a child process; its wall time, peak RSS (its own, from wait4: this orchestrator
    imports no torch, so nothing large is inherited through fork) and output."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(arguments, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(arguments[:4])} failed:\n{stderr}")
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024, "stdout": stdout}


def size_of(directory: Path, suffix: str = ".safetensors") -> int:
    return sum(f.stat().st_size for f in directory.iterdir() if f.name.endswith(suffix))


def measure(work: Path, max_shard_size: str | None, check: bool) -> dict:
    source, out = work / "llama-3.2-1b-shaped", work / "imported"
    me = [sys.executable, __file__]
    shards = ["--max-shard-size", max_shard_size] if max_shard_size else []
    written = child([*me, "--phase", "write", "--work", str(work), *shards])
    imported = child([sys.executable, "-m", "hdlm.cli", "import", str(source), str(out)])
    code = "import hdlm.cli, hdlm.model.hf, torch, tokenizers"
    baseline = child([sys.executable, "-c", code])
    checkpoint = size_of(source)
    result = {
        "seconds": imported["seconds"], "peak_rss_bytes": imported["peak_rss_bytes"],
        "log": imported["stdout"].strip().splitlines(), "checkpoint_bytes": checkpoint,
        "imported_bytes": size_of(out), "write_seconds": written["seconds"],
        "shards": len([f for f in source.iterdir() if f.suffix == ".safetensors"]),
        "baseline_rss_bytes": baseline["peak_rss_bytes"],
        "peak_over_checkpoint": imported["peak_rss_bytes"] / checkpoint,
    }  # fmt: skip
    if check:
        checked = child([*me, "--phase", "check", "--work", str(work)])
        result["max_logit_difference"] = float(checked["stdout"].split()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="scratch directory (default: a temporary)")
    parser.add_argument(
        "--max-shard-size", nargs="+", default=["none"],
        help="one measurement each: none (one model.safetensors) or a size such as 500MB (shards)",
    )  # fmt: skip
    parser.add_argument("--check", action="store_true", help="compare logits with transformers")
    parser.add_argument("--out", default="results/bench", help="where import.json/.md go")
    parser.add_argument("--phase", choices=["write", "check"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "write":
        size = args.max_shard_size[0]
        return write_model(
            Path(args.work) / "llama-3.2-1b-shaped", None if size == "none" else size
        )
    if args.phase == "check":
        return check_logits(Path(args.work) / "llama-3.2-1b-shaped", Path(args.work) / "imported")
    results = []
    for size in args.max_shard_size:
        work = Path(args.work or tempfile.mkdtemp(prefix="hdlm-import-bench-"))
        shutil.rmtree(work / "imported", ignore_errors=True)
        shutil.rmtree(work / "llama-3.2-1b-shaped", ignore_errors=True)
        try:
            results.append(measure(work, None if size == "none" else size, args.check))
        finally:
            if args.work is None:
                shutil.rmtree(work, ignore_errors=True)
    report(results, Path(args.out))


def report(results: list[dict], out: Path) -> None:
    gib = 2**30
    lines = [
        "| checkpoint (bf16) | shards | import wall time | peak RSS | peak / checkpoint | "
        "RSS of python + torch alone | max logit difference vs transformers |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        check = f"{r['max_logit_difference']:.1e}" if "max_logit_difference" in r else "-"
        lines.append(
            f"| {r['checkpoint_bytes'] / gib:.2f} GiB | {r['shards']} | {r['seconds']:.1f} s | "
            f"{r['peak_rss_bytes'] / gib:.2f} GiB | {r['peak_over_checkpoint']:.2f}x | "
            f"{r['baseline_rss_bytes'] / gib:.2f} GiB | {check} |"
        )
    table = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "import.json").write_text(json.dumps(results, indent=2))
    (out / "import.md").write_text(table)
    print(table)
    if any(r["peak_over_checkpoint"] >= 1.5 for r in results):
        raise SystemExit("peak RSS is not under 1.5x the checkpoint's size")


if __name__ == "__main__":
    main()
