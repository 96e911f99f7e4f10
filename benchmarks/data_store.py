"""The token store at scale: start-up memory and time against corpus size, preparation
throughput against the tokenizer's own encode_batch, and training read from the store vs RAM.

    python benchmarks/data_store.py [--sizes-mb 64 256 1024] [--old OLD_CHECKOUT/src]

Stages (each resumes: a finished stage's numbers are kept in results/bench/data.json):
1. corpora: JSONL files of each size, documents drawn from the pydocs corpus (shuffled
   paragraphs, so no two documents repeat), written to --work.
2. prepare: `hdlm data prepare --workers 2` per size (time, tokens/s) and, on the largest corpus's
   first 256 MB, `Tokenizer.encode_batch` on the same documents with the tokenizer's own threads.
3. start: training ar-tiny (GPT-2 tokenizer) with the store prepared: peak RSS and seconds from
   the interpreter's start to the end of the first step (`train.setup` + one `train_step`: data,
   model, optimizer; no evaluation, no checkpoint); with --old, the in-memory path of an older
   checkout (PYTHONPATH=OLD/src) on the same corpus, first start (tokenising) and second (cache).
4. read: training tokens/s reading blocks from the store vs the same blocks in RAM, in one process,
   interleaved rounds.
Writes results/bench/data.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "bench"
SETTINGS = ["data.tokenizer.kind=gpt2", "train.steps=1", "train.eval_every=1000",
            "train.save_every=1000", "train.batch_size=8"]  # fmt: skip
CORPORA = {"OpenWebText": 9.0e9, "FineWeb-10BT": 10.0e9}  # GPT-2 tokens, for the projection


def make_corpus(path: Path, megabytes: int) -> None:
    """JSONL of documents of 1-40 pydocs paragraphs drawn at random, to `megabytes` MB."""
    if path.exists() and path.stat().st_size >= megabytes * 2**20:
        return
    from hdlm.config import DataConfig
    from hdlm.data import load_documents

    paragraphs = [p for d in load_documents(DataConfig()) for p in d.split("\n\n") if p.strip()]
    rng, size = random.Random(megabytes), 0
    with open(path.with_suffix(".tmp"), "w") as f:
        while size < megabytes * 2**20:
            text = "\n\n".join(rng.choices(paragraphs, k=rng.randint(1, 40)))
            line = json.dumps({"text": text}) + "\n"
            f.write(line)
            size += len(line)
    path.with_suffix(".tmp").rename(path)


def timed(command: list[str], env: dict | None = None) -> dict:
    """Wall seconds and peak RSS (MB) of a command, by /usr/bin/time."""
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-f", "%M", *command], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})})  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    peak_kb = int(done.stderr.strip().splitlines()[-1])
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(peak_kb / 1024, 1)}


def prepare(corpus: Path, cache: Path) -> dict:
    command = [sys.executable, "-m", "hdlm", "data", "prepare", str(corpus), "--tokenizer", "gpt2",
               "--workers", "2", "--no-progress", "--set", f"data.cache_dir={cache}"]  # fmt: skip
    result = timed(command)
    store = sorted((cache / "stores").glob(f"*{corpus.stem}*"))[-1]
    index = json.loads((store / "store.json").read_text())
    result["tokens"] = sum(s["tokens"] for s in index["splits"].values())
    result["tokens_per_s"] = round(result["tokens"] / result["seconds"])
    return result


def encode_batch_baseline(corpus: Path, megabytes: int = 256) -> dict:
    """tokens/s of the tokenizer's own encode_batch (its Rust threads, both cores) on the first
    `megabytes` of the corpus' documents, read beforehand."""
    from hdlm.config import TokenizerConfig
    from hdlm.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(TokenizerConfig(kind="gpt2"))
    docs, size = [], 0
    with open(corpus) as f:
        for line in f:
            docs.append(json.loads(line)["text"])
            size += len(line)
            if size >= megabytes * 2**20:
                break
    started, tokens = time.perf_counter(), 0
    for i in range(0, len(docs), 256):
        tokens += sum(len(e.ids) for e in tokenizer.hf.encode_batch_fast(docs[i : i + 256]))
    seconds = time.perf_counter() - started
    return {"megabytes": megabytes, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / seconds)}  # fmt: skip


FIRST_STEP = """
import json, resource, sys, time
started = time.perf_counter()
import torch
from hdlm.config import load_config
from hdlm.data import Batches, prepare_data
from hdlm.train import setup, train_step
from hdlm.train_support import StopSignal
config = load_config("configs/ar-tiny.yaml", sys.argv[1:])
data_started = time.perf_counter()
data = prepare_data(config.data)
Batches(data.blocks["train"], 8, 0).batch(0)
data_seconds = time.perf_counter() - data_started
data_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
run = setup(config, torch.device("cpu"), resume=False)
with StopSignal() as stop:
    train_step(run, 0, stop)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"data_seconds": round(data_seconds, 2), "data_peak_rss_mb": round(data_peak, 1),
                  "seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1)}))
"""


def start(corpus: Path, cache: Path, run: Path, pythonpath: str | None = None) -> dict:
    """The data's start (`prepare_data` and the first batch: seconds, peak RSS after it) and the
    whole start (interpreter to the end of the first training step: data, model, optimizer, one
    step; no evaluation or checkpoint) of ar-tiny on the corpus."""
    overrides = [*SETTINGS, f"data.corpus={corpus}", f"data.cache_dir={cache}", f"out_dir={run}"]
    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    subprocess.run(["rm", "-rf", str(run)])
    done = subprocess.run([sys.executable, "-c", FIRST_STEP, *overrides], capture_output=True,
                          text=True, cwd=ROOT, env=env)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def read_speed(corpus: Path, cache: Path, rounds: int = 3, steps: int = 30) -> dict:
    """Training tokens/s of ar-tiny (GPT-2 vocabulary) reading the store vs the same blocks in
    RAM: one process, the two interleaved round by round."""
    code = f"""
import json, time, torch
from hdlm.config import load_config
from hdlm.data import Batches, prepare_data
from hdlm.model import LanguageModel
from hdlm.train import with_vocabulary
config = load_config("configs/ar-tiny.yaml", ["data.tokenizer.kind=gpt2", "data.corpus={corpus}",
                     "data.cache_dir={cache}", "train.batch_size=8"])
data = prepare_data(config.data, progress=False)
config = with_vocabulary(config, data.tokenizer)
torch.manual_seed(0)
lm = LanguageModel(config, data.tokenizer)
opt = torch.optim.AdamW(lm.net.parameters(), lr=1e-4)
store = data.blocks["train"]
ram = store[: min(len(store), 200_000)]
sources = {{"store": store, "ram": ram}}
speeds = {{k: [] for k in sources}}
for r in range({rounds}):
    for name, blocks in sources.items():
        batches = Batches(blocks, 8, seed=r)
        started = time.perf_counter()
        for step in range({steps}):
            loss = lm.objective.loss(lm.net, batches.batch(step), None)
            loss.backward(); opt.step(); opt.zero_grad()
        speeds[name].append({steps} * 8 * config.data.seq_len / (time.perf_counter() - started))
print(json.dumps(speeds))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    speeds = json.loads(done.stdout.strip().splitlines()[-1])
    median = {k: sorted(v)[len(v) // 2] for k, v in speeds.items()}
    return {"runs": speeds, "store_tokens_per_s": round(median["store"]),
            "ram_tokens_per_s": round(median["ram"]),
            "ratio": round(median["store"] / median["ram"], 3)}  # fmt: skip


def table(results: dict) -> str:
    lines = ["# The token store at scale (benchmarks/data_store.py)", "",
             "Start = `prepare_data` + the first batch (seconds / peak RSS of the process then); "
             "first step = interpreter start to the end of training step 1 (ar-tiny, GPT-2 "
             "vocabulary, batch 8 x 128: model, optimizer and step included).", "",
             "| corpus (JSONL) | GPT-2 tokens | prepare (2 workers) | tokens/s | store: start | "
             "first step | old path: first start | old: from its cache |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    done = {mb: r for mb, r in results["sizes"].items() if "start_store" in r}
    for mb, r in sorted(done.items(), key=lambda kv: int(kv[0])):
        p, s = r["prepare"], r["start_store"]
        old, cached = _start(r.get("start_old")), _start(r.get("start_old_cached"))
        lines.append(f"| {mb} MB | {p['tokens']:,} | {p['seconds']} s | {p['tokens_per_s']:,} | "
                     f"{_start(s)} | {s['seconds']} s, {s['peak_rss_mb']:.0f} MB | {old} | "
                     f"{cached} |")  # fmt: skip
    if done:
        lines += ["", *projection(done[max(done, key=int)])]
    if "encode_batch" in results and done:
        e = results["encode_batch"]
        largest = max(done, key=int)
        ratio = results["sizes"][largest]["prepare"]["tokens_per_s"] / e["tokens_per_s"]
        lines += ["", f"encode_batch alone (the tokenizer's own threads, first {e['megabytes']} "
                  f"MB, documents already in memory): {e['tokens_per_s']:,} tokens/s; "
                  f"`hdlm data prepare --workers 2` on {largest} MB (reading, hashing, writing "
                  f"included): {ratio:.2f}x of it."]  # fmt: skip
    if "read" in results:
        r = results["read"]
        lines += ["", f"Training (ar-tiny, GPT-2 vocabulary, batch 8 x 128, 1 thread, median of "
                  f"{len(r['runs']['store'])} interleaved rounds): reading the store "
                  f"{r['store_tokens_per_s']:,} tokens/s, the same blocks in RAM "
                  f"{r['ram_tokens_per_s']:,}: ratio {r['ratio']}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _start(measured: dict | None) -> str:
    if measured is None:
        return "not run"
    return f"{measured['data_seconds']} s, {measured['data_peak_rss_mb']:.0f} MB"


def projection(largest: dict) -> list[str]:
    """RAM, disk and preparation time of the papers' corpora, scaled from the largest measured
    corpus (disk: 2 bytes per GPT-2 token; RAM: the measured start, flat in corpus size)."""
    speed = largest["prepare"]["tokens_per_s"]
    lines = ["Projection from the largest corpus measured (2 workers here; preparation scales with "
             "workers until the disk or the reader saturates):", "",
             "| corpus | GPT-2 tokens | store on disk | RAM at the data's start | preparation, 2 "
             "workers | with 32 workers (linear) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for name, tokens in CORPORA.items():
        hours = tokens / speed / 3600
        lines.append(f"| {name} | {tokens / 1e9:.0f}B | {tokens * 2 / 2**30:.0f} GiB | "
                     f"{largest['start_store']['data_peak_rss_mb']:.0f} MB | {hours:.0f} h | "
                     f"{hours / 16 * 60:.0f} min |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--work", default="/tmp/hdlm-data-bench", help="corpora and caches")
    parser.add_argument("--old", help="src/ of an older checkout: its in-memory path side by side")
    parser.add_argument("--old-max-mb", type=int, default=256, help="largest corpus for --old")
    parser.add_argument("--report", action="store_true", help="only rewrite data.md from data.json")
    args = parser.parse_args()
    if args.report:
        (OUT / "data.md").write_text(table(json.loads((OUT / "data.json").read_text())))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    path = OUT / "data.json"
    results = json.loads(path.read_text()) if path.exists() else {"sizes": {}}

    def save():
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        (OUT / "data.md").write_text(table(results))

    for mb in args.sizes_mb:
        corpus = work / f"corpus-{mb}mb.jsonl"
        make_corpus(corpus, mb)
        r = results["sizes"].setdefault(str(mb), {})
        cache = work / f"cache-{mb}"
        if "prepare" not in r:  # a fresh cache: the time is the preparation's, not a cache hit
            subprocess.run(["rm", "-rf", str(cache)])
            r["prepare"] = prepare(corpus, cache)
            save()
        if "start_store" not in r:
            r["start_store"] = start(corpus, cache, work / "run")
            save()
        if args.old and mb <= args.old_max_mb and "start_old_cached" not in r:
            old_cache = work / f"old-cache-{mb}"
            r["start_old"] = start(corpus, old_cache, work / "run", args.old)
            r["start_old_cached"] = start(corpus, old_cache, work / "run", args.old)
            save()
        print(mb, "MB:", json.dumps(r), flush=True)
    largest = work / f"corpus-{max(args.sizes_mb)}mb.jsonl"
    if "encode_batch" not in results:
        results["encode_batch"] = encode_batch_baseline(largest)
        save()
    if "read" not in results:
        results["read"] = read_speed(largest, work / f"cache-{max(args.sizes_mb)}")
        save()
    print(table(results))


if __name__ == "__main__":
    main()
