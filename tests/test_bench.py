"""The benchmark cases run (speed itself is measured by `hdlm bench`, not asserted here)."""

import torch

from hdlm import bench

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


def test_sampling_cases_run():
    llama = bench.llama_shape(SIZE)
    for sampler, schedule, cache, shape in [("ar", None, True, {}),
                                            ("ancestral", "block:16:4", False, {}),
                                            ("ancestral", "flat:{steps}", True, {}),
                                            ("ar", None, True, llama),
                                            ("ancestral", "block:16:4", True, llama)]:  # fmt: skip
        case = {"sampler": sampler, "schedule": schedule, "cache": cache, "length": 40,
                "size": SIZE, "n": 2, "device": "cpu", "precision": "fp32",
                "threads": torch.get_num_threads(), "shape": shape}  # fmt: skip
        assert bench.sample_case(case)["tokens_per_s"] > 0
    for order, k in bench.A3_VARIANTS:  # the A3 decoding rows
        case = {"sampler": "a3", "schedule": None, "cache": True, "length": 40, "size": SIZE,
                "n": 2, "device": "cpu", "precision": "fp32", "threads": torch.get_num_threads(),
                "options": {"order": order, "group_size": k, **bench.A3_BENCH_OPTIONS}}  # fmt: skip
        assert bench.sample_case(case)["tokens_per_s"] > 0
