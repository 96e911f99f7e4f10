"""The training loggers: metrics.jsonl always (cut back to the checkpoint on resume), TensorBoard
when asked for and installed, a one-line note otherwise."""

import json
import sys

from hdlm.train_support import JsonlLogger, open_loggers


def test_jsonl_records_past_the_resume_step_are_dropped(tmp_path):
    log = JsonlLogger(tmp_path, resume_step=None)
    for step in (10, 20, 30):
        log.write({"step": step, "loss": 1.0 / step})
    JsonlLogger(tmp_path, resume_step=20)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [10, 20]


def test_tensorboard_is_used_when_installed_else_jsonl_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    loggers = open_loggers(tmp_path, tensorboard=True, resume_step=None)
    assert [type(x).__name__ for x in loggers] == ["JsonlLogger"]
    assert "tensorboard is not installed" in capsys.readouterr().out
    monkeypatch.undo()  # the dev extra installs tensorboard
    loggers = open_loggers(tmp_path, tensorboard=True, resume_step=None)
    for logger in loggers:
        logger.write({"step": 1, "loss": 2.0})
    assert any((tmp_path / "tensorboard").iterdir())
