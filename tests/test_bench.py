"""The benchmark cases run (speed itself is measured by `hdlm bench`, not asserted here)."""

import time

import torch

from hdlm.experiments import bench
from hdlm.families import family as family_row
from hdlm.sampling.registry import check_sampler

SIZE = {"vocab_size": 40, "n_layers": 1, "d_model": 32, "n_heads": 2}


def test_every_family_runs_a_training_case():
    shapes = [(family, {}) for family in bench.TRAIN_FAMILIES]
    shapes += [(family, bench.llama_shape(SIZE)) for family in bench.LLAMA_SHAPED]
    for family, shape in shapes:
        case = {"family": family, "size": SIZE, "seq_len": 32, "batch": 2, "steps": 1,
                "device": "cpu", "precision": "fp32", "threads": torch.get_num_threads(),
                "shape": shape}  # fmt: skip
        result = bench.train_case(case)
        assert result["tokens_per_s"] > 0 and result["peak_mib"] > 0


def test_the_llama_shape_has_swiglu_and_grouped_query_attention():
    shape = bench.llama_shape({"d_model": 512, "n_heads": 8})
    assert shape == {"mlp": "swiglu", "d_ff": 1408, "n_kv_heads": 2}


def test_every_sampling_case_runs_and_times_its_network():
    for _, family, sampler, schedule, cache, per_step, shape, options in bench.SAMPLE_VARIANTS:
        case = {"family": family, "sampler": sampler, "schedule": schedule, "cache": cache,
                "per_step": per_step, "length": 40, "size": SIZE, "n": 2, "device": "cpu",
                "precision": "fp32", "threads": torch.get_num_threads(), "options": options,
                "shape": bench.llama_shape(SIZE) if shape == "llama" else shape}  # fmt: skip
        result = bench.sample_case(case)
        assert result["tokens_per_s"] > 0
        assert 0 < result["network_share"] < 1


def test_the_network_timer_counts_nested_calls_once():
    from hdlm.model import Transformer

    net = Transformer(bench.language_model("mdlm", SIZE, 16, "cpu").config.model)
    timer = bench.NetworkTimer(net, torch.device("cpu"))
    timer.on = True
    tokens = torch.zeros(1, 16, dtype=torch.long)
    start = timer.now()
    net(tokens)  # the head runs inside the forward: one interval, not two
    elapsed = timer.now() - start
    assert 0 < timer.seconds <= elapsed
    hidden = net(tokens, return_hidden=True)
    before = timer.seconds
    net.head(hidden)  # a separate read-out is network time too
    assert timer.seconds > before and timer.depth == 0


def test_the_network_timer_counts_a3_two_stream_passes(monkeypatch):
    """A3's forward pass is `two_stream`, not `forward`: its time is network time."""
    from hdlm.model.a3 import A3Transformer

    original, busy = A3Transformer.two_stream, 0.01

    def slow_two_stream(self, *args, **kwargs):  # CPU work the timer must see
        start = time.process_time()
        while time.process_time() - start < busy:
            pass
        return original(self, *args, **kwargs)

    monkeypatch.setattr(A3Transformer, "two_stream", slow_two_stream)
    lm = bench.language_model("a3", SIZE, 16, "cpu")
    timer = bench.NetworkTimer(lm.net, torch.device("cpu"))
    passes = []
    counting = lm.net.two_stream
    lm.net.two_stream = lambda *a, **k: passes.append(1) or counting(*a, **k)
    timer.on = True
    lm.sample(1, 12, sampler="a3", eos_stop=False)
    assert len(passes) >= 11 and timer.seconds >= busy * len(passes)


def test_every_sampling_row_names_a_registered_sampler_of_its_family():
    for label, family_name, sampler, *_, options in bench.SAMPLE_VARIANTS:
        chosen = check_sampler(family_row(family_name), sampler)
        assert set(options) <= {option.name for option in chosen.options}, label


def test_the_train_variants_cover_checkpointing_and_both_attention_kernels():
    common = {"size": SIZE, "device": "cpu", "shape": {}}
    labels = [c["label"] for c in bench.train_cases(common, ["ar", "a3"], None)]
    assert "a3 (activation checkpointing)" in labels and "a3 (flex, forward only)" in labels
    only = bench.train_cases(common, ["block-diffusion"], ["attention"])
    assert [c["shape"] for c in only] == [{"attention": "sdpa"}, {"attention": "flex"}]
    cuda = bench.train_cases({**common, "device": "cuda"}, ["a3"], ["attention"])
    assert all(c["backward"] for c in cuda)


def test_a_case_reports_the_tiles_flex_skips_and_runs_checkpointed():
    base = {"size": SIZE, "seq_len": 32, "batch": 2, "steps": 1, "device": "cpu",
            "precision": "fp32", "threads": torch.get_num_threads()}  # fmt: skip
    flexed = bench.train_case({**base, "family": "block-diffusion", "backward": False,
                               "shape": {"attention": "flex"}})  # fmt: skip
    assert flexed["skipped"] == 0  # one 128 x 128 tile at this length
    checkpointed = bench.train_case({**base, "family": "a3", "shape": {}, "checkpointing": True})
    assert checkpointed["tokens_per_s"] > 0 and checkpointed["skipped"] == 0
    assert bench.train_case({**base, "family": "ar", "shape": {}})["skipped"] is None


def test_sampling_cases_run_in_every_precision(tmp_path):
    rows = []
    for precision in bench.SAMPLE_PRECISIONS:
        if precision == "fp16":
            continue  # (a GPU precision)
        case = {"family": "block-diffusion", "sampler": "ancestral", "schedule": "block:4:2",
                "cache": True, "per_step": 2, "length": 40, "size": SIZE, "n": 1,
                "device": "cpu", "precision": precision, "threads": 1}  # fmt: skip
        rows.append({**case, **bench.sample_case(case), "label": precision, "vs_ar": 1.0,
                     "vs_first_precision": 1.0})  # fmt: skip
    table = bench.write_results("sample", {"rows": rows, "precisions": ["fp32"]}, tmp_path)
    assert "| vs fp32 |" in table and "[" not in table
