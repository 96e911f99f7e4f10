"""End to end through the CLI: train a few steps -> save -> load -> sample -> eval, and every
kind of bad input giving one line, exit code 2 and nothing half-written."""

import json
import subprocess
import sys

import pytest
import torch

import hdlm
from hdlm.cli import main
from hdlm.config import load_config
from hdlm.train import train

TINY = [
    "--set", "data.corpus=synthetic",
    "--set", "data.tokenizer.kind=char",
    "--set", "data.seq_len=32",
    "--set", "data.synthetic.n_docs=300",
    "--set", "data.synthetic.doc_len=64",
    "--set", "data.synthetic.n_states=12",
    "--set", "model.max_len=64",
    "--set", "model.n_layers=2",
    "--set", "model.d_model=64",
    "--set", "model.n_heads=2",
    "--set", "train.batch_size=16",
    "--set", "train.warmup_steps=5",
    "--set", "train.eval_every=40",
    "--set", "train.eval_batches=4",
    "--set", "train.save_every=20",
    "--set", "train.keep_last=2",
    "--set", "train.precision=fp32",
]  # fmt: skip


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HDLM_CACHE_DIR_FOR_TESTS", str(tmp_path / "cache"))
    return ["--set", f"data.cache_dir={tmp_path / 'cache'}"]


def run(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one-line error the CLI printed last (progress bars may precede it), no traceback."""
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert "Traceback" not in err and last.startswith("hdlm: error: "), err
    return last


def train_args(out, cache, *extra):
    return ["train", "--config", "configs/ar-tiny.yaml", "--out", str(out), "--no-progress",
            *TINY, *cache, *extra]  # fmt: skip


def test_train_save_load_sample_eval(tmp_path, cache, capsys):
    out = tmp_path / "run"
    code, _, err = run(train_args(out, cache, "--set", "train.steps=40"), capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert val[-1] < val[0] - 0.3, val  # training lowers the validation loss
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_0000020",
        "step_0000040",
    ]

    lm = hdlm.load(out)
    again = hdlm.load(lm.save(tmp_path / "copy"))
    tokens = lm.sample(2, 24, seed=3)
    assert tokens.shape == (2, 24) and (tokens[:, 0] == lm.tokenizer.bos_id).all()
    torch.testing.assert_close(lm.net(tokens), again.net(tokens), rtol=0, atol=0)

    code, text, err = run(
        ["sample", str(out), "-n", "2", "--length", "20", "--prompt", "ab"], capsys
    )
    assert code == 0, err
    assert text.count("=== sample") == 2

    code, text, err = run(["eval", str(out), "--split", "validation", *cache], capsys)
    assert code == 0, err
    result = json.loads(text)
    assert result["family"] == "ar" and result["corpus"] == "synthetic"
    # a model cannot beat the entropy rate of the source it is evaluated on
    assert result["nelbo_per_token"] > result["entropy_floor"] > 0
    assert abs(result["nelbo_per_token"] - val[-1]) < 0.5


def test_resume_continues_exactly(tmp_path, cache, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    per_step = ["--set", "train.steps=30", "--set", "train.log_every=1"]
    assert run(train_args(straight, cache, *per_step), capsys)[0] == 0
    overrides = [*TINY[1::2], *per_step[1::2], cache[1], f"out_dir={resumed}"]
    train(load_config("configs/ar-tiny.yaml", overrides), progress=False, stop_after=13)
    assert (resumed / "latest").read_text().strip() == "checkpoints/step_0000013"
    assert run(train_args(resumed, cache, *per_step, "--resume"), capsys)[0] == 0

    def losses(out):
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if '"loss"' in line]

    assert losses(resumed) == losses(straight)
    a, b = hdlm.load(straight), hdlm.load(resumed)
    for (name, p), q in zip(a.net.state_dict().items(), b.net.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--set", "model.n_layer=2"],
            "unknown config key 'model.n_layer'; did you mean 'n_layers'",
        ),
        (["--set", "train.lr=fast"], "train.lr must be float"),
        (["--set", "data.corpus=/no/such/corpus.txt"], "not found"),
        (["--set", "data.tokenizer.kind=wordpiece"], "data.tokenizer.kind must be one of"),
        (["--set", "data.tokenizer.path=/no/such/tokenizer.json"], "not found"),
        (["--set", "data.seq_len=128"], "longer than the model's context"),
    ],
)
def test_bad_training_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path, cache, capsys, extra, message
):
    out = tmp_path / "run"
    code, _, err = run(train_args(out, cache, *extra), capsys)
    assert code == 2
    assert message in error_line(err)
    assert not out.exists()


def test_checkpoint_misuse_is_a_clear_error(tmp_path, cache, capsys):
    out = tmp_path / "run"
    assert run(train_args(out, cache, "--set", "train.steps=2"), capsys)[0] == 0

    def error(args):
        code, _, err = run(args, capsys)
        assert code == 2
        return error_line(err)

    assert "already holds a training run" in error(train_args(out, cache, "--set", "train.steps=4"))
    other_model = train_args(out, cache, "--set", "train.steps=4", "--set", "model.n_layers=1")
    assert "resume with the same config" in error([*other_model, "--resume"])
    bpe = ["--set", "data.tokenizer.kind=bpe", "--set", "data.tokenizer.vocab_size=300"]
    other_vocab = train_args(tmp_path / "b", cache, "--set", f"train.init_from={out}", *bpe)
    assert "another tokenizer" in error(other_vocab)
    assert not (tmp_path / "b").exists()
    assert "longer than the model's context" in error(["sample", str(out), "--length", "65"])
    assert "not found" in error(["sample", str(tmp_path / "missing")])
    assert "holds no checkpoint" in error(["eval", str(tmp_path)])
    assert "unknown sampler" in error(["sample", str(out), "--sampler", "nope"])
    assert "unknown config key" in error(["eval", str(out), "--set", "data.sequence=3"])
    checkpoint = out / (out / "latest").read_text().strip()
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "corrupt or truncated" in error(["sample", str(out)])


def test_console_script_help():
    for args in [[], ["train"], ["sample"], ["eval"]]:
        done = subprocess.run([sys.executable, "-m", "hdlm.cli", *args, "--help"],
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0 and "usage: hdlm" in done.stdout


@pytest.mark.parametrize("family", ["mdlm", "block-diffusion", "slide", "eps-hybrid"])
def test_every_diffusion_family_trains_saves_loads_and_evaluates(tmp_path, cache, capsys, family):
    out = tmp_path / family
    schedule = {"block-diffusion": "block:8:4", "slide": "slide:8:4"}.get(family, "flat:100")
    diffusion = ["--set", f"diffusion.schedule={schedule}", "--set", "diffusion.eval_steps=4"]
    args = train_args(out, cache, "--set", f"family={family}", "--set", "train.steps=4", *diffusion)
    code, _, err = run(args, capsys)
    assert code == 0, err
    code, text, err = run(
        ["eval", str(out), "--split", "test", "--max-blocks", "8", *cache], capsys
    )
    assert code == 0, err
    result = json.loads(text)
    assert result["family"] == family and result["nelbo_per_token"] > result["entropy_floor"]
    if family in ("mdlm", "eps-hybrid"):  # the `time: count` families score infilling too
        infill = ["--metrics", "infill", "--infill-length", "16", "--infill-span", "4"]
        code, text, err = run(["eval", str(out), "--max-blocks", "4", *infill, *cache], capsys)
        assert code == 0, err
        result = json.loads(text)["infill"]
        assert result["spans"] == 4 and 0 <= result["accuracy"] <= 1
        assert result["span_nll_per_token"] > 0
    lm = hdlm.load(out)
    prompt = [3, 4, 5]
    steps = {"steps": 8} if schedule.startswith("flat:") else {}  # (block/slide: in the spec)
    tokens = lm.sample(3, 20, prompt=prompt, seed=1, **steps)
    assert tokens[:, 1:4].tolist() == [prompt] * 3  # the prompt is never changed
    assert not (tokens == lm.tokenizer.mask_id).any()  # every position was revealed
    assert torch.equal(tokens, lm.sample(3, 20, prompt=prompt, seed=1, **steps))
    code, text, err = run(["sample", str(out), "--sampler", "acs", "--length", "20"], capsys)
    assert code == 0 and text.count("=== sample") == 2, err


def test_plot_schedule(tmp_path, capsys):
    svg = tmp_path / "s.svg"
    code, _, _ = run(["plot", "schedule", "block:4:3", "--length", "12", "--out", str(svg)], capsys)
    assert code == 0 and svg.read_text().startswith("<?xml")
    code, _, err = run(["plot", "schedule", "block:4", "--out", str(tmp_path / "s.png")], capsys)
    assert code == 2 and "bad schedule" in error_line(err)
