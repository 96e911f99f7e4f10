"""The benchmark cases run (speed itself is measured by `hdlm bench`, not asserted here)."""

import torch

from hdlm import bench

SIZE = {"vocab_size": 40, "n_layers": 1, "d_model": 32, "n_heads": 2}


def test_every_family_runs_a_training_case():
    for family in bench.TRAIN_FAMILIES:
        case = {"family": family, "size": SIZE, "seq_len": 32, "batch": 2, "steps": 1,
                "device": "cpu", "precision": "fp32",
                "threads": torch.get_num_threads()}  # fmt: skip
        result = bench.train_case(case)
        assert result["tokens_per_s"] > 0 and result["peak_mib"] > 0


def test_sampling_cases_run():
    for sampler, schedule, cache in [("ar", None, True), ("ancestral", "block:16:4", False),
                                     ("ancestral", "flat:{steps}", True)]:  # fmt: skip
        case = {"sampler": sampler, "schedule": schedule, "cache": cache, "length": 40,
                "size": SIZE, "n": 2, "device": "cpu", "precision": "fp32",
                "threads": torch.get_num_threads()}  # fmt: skip
        assert bench.sample_case(case)["tokens_per_s"] > 0
    for order, k in bench.A3_VARIANTS:  # the A3 decoding rows
        case = {"sampler": "a3", "schedule": None, "cache": True, "length": 40, "size": SIZE,
                "n": 2, "device": "cpu", "precision": "fp32", "threads": torch.get_num_threads(),
                "options": {"order": order, "group_size": k, **bench.A3_BENCH_OPTIONS}}  # fmt: skip
        assert bench.sample_case(case)["tokens_per_s"] > 0
