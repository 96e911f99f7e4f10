"""Faults during training: SIGKILL, SIGTERM and SIGINT, damaged checkpoints, no disk space, an
unwritable directory and non-finite losses. Each either continues exactly where it stopped or
gives one clear line before anything is written."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
import torch

import hdlm
from hdlm.cli import main
from hdlm.config import load_config
from hdlm.errors import CheckpointError, HdlmError
from hdlm.objectives import AutoregressiveObjective
from hdlm.train import train
from tests.test_cli import TINY, error_line, train_args

STEPS = ["--set", "train.steps=40", "--set", "train.log_every=1"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ["--set", f"data.cache_dir={tmp_path_factory.mktemp('cache')}"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache):
    """The uninterrupted run every interrupted one must reproduce: checkpoints at 20 and 40."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(train_args(out, cache, *STEPS)) == 0
    return out


def config(out, cache, *overrides):
    return load_config("configs/ar-tiny.yaml", [*TINY[1::2], *STEPS[1::2], cache[1],
                                                f"out_dir={out}", *overrides])  # fmt: skip


def records(out):
    """metrics.jsonl without the wall-clock throughput."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"} for line in lines]


def latest(out):
    return (out / "latest").read_text().strip() if (out / "latest").exists() else None


def assert_resumes_exactly(out, straight, cache):
    """--resume continues to the end with the loss sequence and weights of the straight run."""
    assert main(train_args(out, cache, *STEPS, "--resume")) == 0
    assert records(out) == records(straight)
    for (name, p), q in zip(hdlm.load(straight).net.state_dict().items(),
                            hdlm.load(out).net.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(p, q), name


def start(out, cache):
    command = [sys.executable, "-m", "hdlm.cli", *train_args(out, cache, *STEPS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for(process, condition, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "training did not get there in time"
        time.sleep(0.005)


def steps_logged(out):
    path = out / "metrics.jsonl"
    return (
        [json.loads(line)["step"] for line in path.read_text().splitlines()]
        if path.exists()
        else []
    )


def test_sigkill_between_checkpoints_then_resume_equals_uninterrupted(tmp_path, cache, straight):
    out = tmp_path / "run"
    process = start(out, cache)
    # after the checkpoint of step 20 and some steps past it, before the next one (step 40)
    wait_for(
        process, lambda: latest(out) == "checkpoints/step_0000020" and max(steps_logged(out)) >= 23
    )
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert latest(out) == "checkpoints/step_0000020", "killed too late: not between checkpoints"
    assert max(steps_logged(out)) > 20  # work past the checkpoint was lost and is redone
    assert_resumes_exactly(out, straight, cache)


def test_sigterm_saves_and_exits_cleanly_then_resume_equals_uninterrupted(
    tmp_path, cache, straight
):
    out = tmp_path / "run"
    process = start(out, cache)
    wait_for(process, lambda: max(steps_logged(out), default=0) >= 5)
    process.send_signal(signal.SIGTERM)
    out_text, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()[-2000:]
    stopped = int(latest(out).removeprefix("checkpoints/step_"))
    assert 5 <= stopped < 20  # the step it was in was finished and saved: not a save_every step
    assert f"SIGTERM: stopped after step {stopped}" in out_text.decode()
    assert_resumes_exactly(out, straight, cache)


def test_sigint_saves_and_exits_130(tmp_path, cache, monkeypatch, capsys):
    loss = AutoregressiveObjective.loss
    calls = []

    def interrupted_at_step_3(self, net, tokens, generator):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the handler only takes note
        return loss(self, net, tokens, generator)

    monkeypatch.setattr(AutoregressiveObjective, "loss", interrupted_at_step_3)
    out = tmp_path / "run"
    assert main(train_args(out, cache, *STEPS)) == 130
    assert latest(out) == "checkpoints/step_0000003"
    assert "SIGINT: stopped after step 3" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, cache, straight, capsys
):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    shutil.rmtree(out / "checkpoints/step_0000040")
    train(config(out, cache), progress=False, resume=True, stop_after=30)  # keeps 20 and 30
    newest = out / "checkpoints/step_0000030/model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-64])  # truncated
    capsys.readouterr()

    with pytest.raises(CheckpointError, match=f"{newest} is corrupt or truncated"):
        hdlm.load(newest.parent)  # named explicitly: an error, no fall-back
    lm = hdlm.load(out)
    warning = capsys.readouterr().err
    assert f"hdlm: warning: {newest} is corrupt or truncated" in warning
    assert "using" in warning and "step_0000020" in warning
    previous = hdlm.load(out / "checkpoints/step_0000020")
    assert torch.equal(lm.net.embed.weight, previous.net.embed.weight)
    # --resume falls back the same way, and still reproduces the uninterrupted run
    assert_resumes_exactly(out, straight, cache)
    assert "corrupt or truncated" in capsys.readouterr().err


def test_altered_manifest_and_no_intact_checkpoint(tmp_path, cache, straight, capsys):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    for checkpoint in (out / "checkpoints").iterdir():
        config_file = checkpoint / "config.json"
        config_file.write_text(config_file.read_text().replace('"n_layers": 2', '"n_layers": 3'))
    code = main(["sample", str(out)])
    assert code == 2
    assert f"{out} has no intact checkpoint" in error_line(capsys.readouterr().err)


def test_no_disk_space_is_refused_before_training(tmp_path, cache, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**5, 10**5))
    out = tmp_path / "run"
    assert main(train_args(out, cache, *STEPS)) == 2
    line = error_line(capsys.readouterr().err)
    assert "not enough disk space" in line and "train.keep_last=2" in line
    assert not out.exists()


def test_unwritable_output_directory_is_refused_before_training(tmp_path, cache, capsys):
    (tmp_path / "file").write_text("not a directory")
    assert main(train_args(tmp_path / "file" / "run", cache, *STEPS)) == 2
    assert f"cannot write to {tmp_path / 'file'}" in error_line(capsys.readouterr().err)


def nan_at(steps):
    """An AR loss that is NaN at the given (1-based) steps."""
    loss, calls = AutoregressiveObjective.loss, []

    def patched(self, net, tokens, generator):
        calls.append(1)
        value = loss(self, net, tokens, generator)
        return value * float("nan") if len(calls) in steps else value

    return patched


def test_nonfinite_loss_stops_with_the_step_and_saves_nothing_bad(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(AutoregressiveObjective, "loss", nan_at({25}))
    out = tmp_path / "run"
    with pytest.raises(HdlmError, match="the loss is nan at step 25; stopped without applying"):
        train(config(out, cache), progress=False)
    assert latest(out) == "checkpoints/step_0000020"
    assert max(steps_logged(out)) == 24


def test_nonfinite_loss_skip_skips_the_update_and_counts(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(AutoregressiveObjective, "loss", nan_at({3, 4}))
    out = tmp_path / "run"
    run = config(out, cache, "train.on_nonfinite=skip", "train.steps=5", "train.max_nonfinite=3",
                 "train.save_every=1", "train.keep_last=5")  # fmt: skip
    train(run, progress=False)
    logged = records(out)
    assert [r["skipped_steps"] for r in logged if "skipped_steps" in r] == [1, 2, 2]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 5]
    after = {step: hdlm.load(out / f"checkpoints/step_{step:07d}").net for step in (2, 4, 5)}
    assert torch.equal(after[4].embed.weight, after[2].embed.weight)  # skipped: unchanged
    assert not torch.equal(after[5].embed.weight, after[4].embed.weight)

    monkeypatch.setattr(AutoregressiveObjective, "loss", nan_at({1, 2, 3, 4}))
    with pytest.raises(HdlmError, match="the loss is nan at step 3 .3 non-finite steps in a row"):
        train(config(tmp_path / "b", cache, "train.on_nonfinite=skip", "train.max_nonfinite=3"),
              progress=False)  # fmt: skip
