"""Data parallelism: 2 CPU processes (gloo) on a global batch train exactly what one process
trains on the same global batch (same data, same updates, same validation sums)."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

import hdlm
from hdlm.cli import main
from hdlm.config import load_config
from hdlm.data import Batches
from hdlm.train import train
from tests.test_cli import TINY

# fp32, gradient accumulation (DDP's no_sync path) and EMA (gathered from FSDP shards)
SETTINGS = [*TINY[1::2], "train.steps=4", "train.log_every=1", "train.grad_accum=2",
            "train.ema=0.5", "train.eval_every=4"]  # fmt: skip


# A3 in groups of two, left to right: no random grouping, so the ranks' slices see exactly what
# one process sees; grouped-query SwiGLU blocks, so the Llama-shaped two-stream pass is sharded
A3 = [*SETTINGS, "a3.grouping=left-to-right", "a3.group_size=2", "model.mlp=swiglu",
      "model.n_kv_heads=1", "model.d_ff=96"]  # fmt: skip
CONFIGS = {"ar": ("configs/ar-tiny.yaml", SETTINGS), "a3": ("configs/a3-tiny.yaml", A3)}


def settings(root, out, parallel="ddp", family="ar"):
    return [*CONFIGS[family][1], f"data.cache_dir={root / 'cache'}", f"train.parallel={parallel}",
            f"out_dir={out}"]  # fmt: skip


def single_run(root, family="ar"):
    config = load_config(CONFIGS[family][0], settings(root, root / "run", family=family))
    train(config, progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return single_run(tmp_path_factory.mktemp("single"))


def assert_same_run(single, multi):
    def records(out):
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    a, b = records(single), records(multi)
    assert [sorted(r) for r in a] == [sorted(r) for r in b]  # same records, same steps
    for r, s in zip(a, b, strict=True):
        for key in ("loss", "val_loss"):
            if key in r:
                assert s[key] == pytest.approx(r[key], rel=1e-6), (r, s)
    one, two = hdlm.load(single), hdlm.load(multi)  # EMA weights
    for (name, p), q in zip(
        one.net.state_dict().items(), two.net.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    state = [torch.load(run / "checkpoints/step_0000004/training_state.pt", weights_only=True)
             for run in (single, multi)]  # fmt: skip
    for name, raw in state[0]["raw_weights"].items():
        torch.testing.assert_close(state[1]["raw_weights"][name], raw, rtol=1e-5, atol=1e-6)
    moments = [s["optimizer"]["state"]["blocks.0.attn.qkv.weight"]["exp_avg_sq"] for s in state]
    torch.testing.assert_close(moments[1], moments[0], rtol=1e-4, atol=1e-12)


def _rank(rank, port, overrides, family="ar"):
    """One torchrun-like rank (a spawned process)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
    train(load_config(CONFIGS[family][0], overrides), progress=False)


def two_processes(tmp_path, parallel, family="ar", extra=()):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi = tmp_path / parallel
    overrides = [*settings(tmp_path, multi, parallel, family), *extra]
    # spawn, not fork: a fork copies whatever locks the test process's threads (progress bars,
    # prefetchers of earlier tests) hold, and a rank could hang on one
    mp.start_processes(_rank, (port, overrides, family), nprocs=2, start_method="spawn")
    return multi


CHECKPOINTING = ["train.activation_checkpointing=true"]


@pytest.mark.parametrize(
    ("parallel", "extra"), [("ddp", ()), ("fsdp", ()), ("ddp", CHECKPOINTING)],
    ids=["ddp", "fsdp", "ddp-checkpointing"],
)  # fmt: skip
def test_two_processes_equal_one_process(tmp_path, single, parallel, extra):
    assert_same_run(single, two_processes(tmp_path, parallel, extra=extra))


@pytest.mark.parametrize("extra", [(), CHECKPOINTING], ids=["plain", "checkpointing"])
def test_a3_under_fsdp_equals_one_process(tmp_path, extra):
    """The two-stream pass goes through FSDP's hooks: sharded A3 training is the same run, with
    each block's activations recomputed in the backward pass or not."""
    single = single_run(tmp_path / "single", "a3")
    assert_same_run(single, two_processes(tmp_path, "fsdp", "a3", extra))


def test_nproc_execs_torchrun_with_the_same_arguments(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "execv", lambda *args: calls.append(args) or sys.exit(0))
    args = ["train", "--config", "configs/ar-tiny.yaml", "--nproc", "2", "--resume",
            "--out", str(tmp_path), "--set", "train.steps=3"]  # fmt: skip
    with pytest.raises(SystemExit):
        main(args)
    ((executable, command),) = calls
    assert command[:6] == [executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", "-m"]  # fmt: skip
    assert command[6:] == ["hdlm", "train", "--config", "configs/ar-tiny.yaml", "--resume",
                           "--set=train.steps=3", f"--set=out_dir={tmp_path}"]  # fmt: skip


@pytest.mark.slow
def test_nproc_cli_runs_ddp_end_to_end(tmp_path, single):
    multi = tmp_path / "ddp"
    command = [sys.executable, "-m", "hdlm.cli", "train", "--nproc", "2", "--no-progress",
               "--config", "configs/ar-tiny.yaml"]  # fmt: skip
    command += [f"--set={s}" for s in settings(tmp_path, multi)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "processes=2 (ddp)" in done.stdout + done.stderr
    assert done.stdout.count("saved to") == 1  # rank 0 alone speaks
    assert_same_run(single, multi)


def test_global_batch_must_split_evenly(monkeypatch):
    from hdlm import distributed
    from hdlm.errors import ConfigError

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with pytest.raises(ConfigError, match="train.batch_size=16 is the global batch"):
        distributed.check_batch(16)
    batch = torch.arange(12).view(6, 2)
    assert distributed.shard(batch).tolist() == [[4, 5], [6, 7]]  # rank 1's contiguous slice


def test_two_torchrun_nodes_read_disjoint_data_and_equal_one_process(tmp_path, single):
    """Two torchrun "nodes" on 127.0.0.1 (c10d rendezvous, one rank each): each rank reads only
    its own blocks, together exactly the one-process batches, and the run is the same run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    multi, trace = tmp_path / "nodes", tmp_path / "trace"
    trace.mkdir()

    def node(host: bool) -> list[str]:  # both "nodes" are 127.0.0.1: say which hosts the store
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=hdlm-test",
                f"--rdzv-conf=is_host={int(host)}", "--max-restarts=0", "-m", "hdlm", "train",
                "--no-progress", "--config", "configs/ar-tiny.yaml",
                *(f"--set={s}" for s in settings(tmp_path, multi))]  # fmt: skip

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HDLM_DATA_TRACE": str(trace)}
    logs = [tmp_path / f"node{k}.log" for k in range(2)]  # files: a full pipe would block a node
    nodes = [subprocess.Popen(node(k == 0), env=env, stdout=open(logs[k], "w"),  # noqa: SIM115
                              stderr=subprocess.STDOUT) for k in range(2)]  # fmt: skip
    for process in nodes:
        process.wait(timeout=300)
    outputs = [log.read_text()[-3000:] for log in logs]
    assert all(process.returncode == 0 for process in nodes), outputs[0] + outputs[1]
    assert_same_run(single, multi)
    reads = [[json.loads(line) for line in (trace / f"rank{r}.jsonl").read_text().splitlines()]
             for r in range(2)]  # fmt: skip
    state = torch.load(multi / "checkpoints/step_0000004/training_state.pt", weights_only=True)
    config = load_config(CONFIGS["ar"][0], settings(tmp_path, multi))
    one = Batches(range(state["data"]["train_blocks"]), config.train.batch_size, config.seed)
    read = [{r["batch"]: r["blocks"] for r in rank} for rank in reads]
    for batch in range(8):  # 4 steps x 2 micro-batches (the prefetcher may read ahead)
        mine, theirs = read[0][batch], read[1][batch]
        assert len(mine) == len(theirs) and not set(mine) & set(theirs)
        assert mine + theirs == one.indices(batch).tolist()
