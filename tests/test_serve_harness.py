"""lm-evaluation-harness through `hdlm serve`: its `local-completions` model (the OpenAI
completions client, with the server's tokenizer through vLLM's `tokenizer_backend=remote`
routes) scores a local multiple-choice task exactly as `hdlm harness` does in process."""

import json

import pytest
from helpers import language_model

pytest.importorskip("fastapi")
lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("tenacity")  # lm-eval[api], what its API models need
pytest.importorskip("lm_eval.models.openai_completions")  # registers local-completions
from live_server import running  # noqa: E402

from hdlm.eval.harness import HdlmLM, run_harness, task_manager  # noqa: E402
from hdlm.serve.app import create_app  # noqa: E402

# contexts are never empty: lm-eval's completions client puts EOS before an empty context,
# `hdlm harness` scores it after BOS alone (the two differ by design, not by a bug)
ROWS = [
    {"context": "abc", "choices": ["d", "xyz", "ab"], "label": 0},
    {"context": "hello", "choices": ["world", "q"], "label": 1},
    {"context": "the", "choices": ["cat", "dog", "emu"], "label": 2},
    {"context": "zz", "choices": ["top", "zz"], "label": 1},
    {"context": "quick", "choices": ["brown", "fox", "jumps"], "label": 0},
]


def write_task(folder):
    folder.mkdir()
    (folder / "served_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (folder / "served_mc.yaml").write_text(
        f"task: served_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {folder / 'served_mc.jsonl'}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{context}}'\ndoc_to_target: label\n"
        "doc_to_choice: choices\ntarget_delimiter: ' '\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return folder


def test_local_completions_through_the_server_match_hdlm_harness(tmp_path):
    lm = language_model("ar")
    tasks = str(write_task(tmp_path / "tasks"))
    direct = run_harness(HdlmLM(lm, progress=False), ["served_mc"], tasks, bootstrap_iters=0)
    with running(create_app(lm, "tiny-ar")) as url:
        args = (f"model=tiny-ar,base_url={url}/v1/completions,tokenizer_backend=remote,"
                "tokenized_requests=True,num_concurrent=1,max_retries=1")  # fmt: skip
        served = lm_eval.simple_evaluate(
            model="local-completions", model_args=args, tasks=["served_mc"],
            task_manager=task_manager(["served_mc"], tasks), bootstrap_iters=0,
            log_samples=True,
        )  # fmt: skip
    ours, theirs = direct["results"]["served_mc"], served["results"]["served_mc"]
    assert theirs["acc,none"] == ours["acc,none"]
    assert theirs["acc_norm,none"] == ours["acc_norm,none"]
    # and the numbers under the accuracy: each choice's log-likelihood is score_choices'
    for sample in served["samples"]["served_mc"]:
        row = ROWS[sample["doc_id"]]
        expected = [s.logprob for s in lm.score_choices(row["context"] + " ", row["choices"])]
        got = [value for ((value, _greedy),) in sample["resps"]]
        assert got == pytest.approx(expected, abs=1e-4)
