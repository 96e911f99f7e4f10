"""The lm-evaluation-harness adapter (`hdlm.eval.harness`, `hdlm harness`): local tasks of the three
request kinds run end to end for an ar, a diffusion and an a3 checkpoint, and their metrics are
the adapter's own scores."""

import json
import math

import pytest
from helpers import language_model
from test_cli import error_line
from test_zero_shot import run

from hdlm.eval.harness import HdlmLM, cut, run_harness
from hdlm.eval.scoring import score_requests

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

MC = [
    {"context": "abc", "choices": ["d", "xyz", "ab"], "label": 0},
    {"context": "hello", "choices": ["world", "q"], "label": 1},
    {"context": "", "choices": ["aaa", "abc"], "label": 1},
]
DOCS = ["the quick brown fox " * 4, "jumps over the lazy dog"]
PROMPTS = [{"prompt": "abcab", "answer": "c"}, {"prompt": "xyzxy", "answer": "z"}]


def write_tasks(folder):
    """Three local tasks: multiple choice, rolling perplexity and generate-until."""
    folder.mkdir()
    data = {"toy_mc": MC, "toy_ppl": [{"text": d} for d in DOCS], "toy_gen": PROMPTS}
    for name, rows in data.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    header = "task: {0}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {1}\n"
    bodies = {
        "toy_mc": "output_type: multiple_choice\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: label\ndoc_to_choice: choices\ntarget_delimiter: ''\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n",
        "toy_ppl": "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{text}}'\nmetric_list:\n  - metric: word_perplexity\n"
        "  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        "toy_gen": "output_type: generate_until\ndoc_to_text: '{{prompt}}'\n"
        "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['q']\n  max_gen_toks: 3\n"
        "metric_list:\n  - metric: exact_match\n",
    }
    for name, body in bodies.items():
        text = header.format(name, folder / f"{name}.jsonl") + "test_split: test\n" + body
        (folder / f"{name}.yaml").write_text(text)
    return folder


@pytest.mark.parametrize("family", ["ar", "mdlm", "a3"])
def test_local_tasks_run_end_to_end_and_report_the_adapters_scores(tmp_path, family):
    lm = language_model(family)
    model = HdlmLM(lm.save(tmp_path / family), batch_size=4, mc_samples=8, progress=False)
    tasks = write_tasks(tmp_path / "tasks")
    results = run_harness(model, ["toy_mc", "toy_ppl", "toy_gen"], str(tasks), bootstrap_iters=0)
    metrics = results["results"]
    # multiple choice: the argmax of `score_choices` (the same requests, the same scores)
    chosen = [
        max(range(len(doc["choices"])),
            key=lambda i, doc=doc: model.lm.score_choices(doc["context"], doc["choices"],
                                                          mc_samples=8)[i].logprob)
        for doc in MC
    ]  # fmt: skip
    accuracy = sum(c == doc["label"] for c, doc in zip(chosen, MC, strict=True)) / len(MC)
    assert metrics["toy_mc"]["acc,none"] == pytest.approx(accuracy)
    # rolling perplexity: each document after BOS in blocks of the model's window
    requests = [([], model.lm.tokenizer.encode(d)) for d in DOCS]
    logprob = sum(s.logprob for s in score_requests(model.lm, requests, mc_samples=8))
    n_bytes = sum(len(d.encode()) for d in DOCS)
    assert metrics["toy_ppl"]["byte_perplexity,none"] == pytest.approx(
        math.exp(-logprob / n_bytes), rel=1e-4
    )
    assert 0 <= metrics["toy_gen"]["exact_match,none"] <= 1
    exact = family in ("ar", "a3")
    assert results["hdlm"]["family"] == family
    assert results["hdlm"]["loglikelihood"] == ("exact" if exact else "-NELBO (lower bound)")


def test_generation_honours_stop_sequences_and_the_token_budget():
    lm = language_model("ar")
    model = HdlmLM(lm, progress=False)
    requests = [
        Instance("generate_until", {}, ("abc", {"until": ["b"], "max_gen_toks": 6}), 0),
        Instance("generate_until", {}, ("xyz", {"until": "b", "max_gen_toks": 6}), 1),
        Instance("generate_until", {}, ("abc", {"until": [], "max_gen_toks": 4}), 2),
    ]
    out = model.generate_until(requests)
    assert "b" not in out[0] and "b" not in out[1]
    assert len(lm.tokenizer.encode(out[2])) <= 4
    # greedy by default: the same request gives the same text, and it continues the prompt
    assert model.generate_until(requests[:1]) == out[:1]
    tokenizer = lm.tokenizer
    ids = tokenizer.encode("abcdef")
    assert cut(tokenizer, ids, ["d", "c"]) == "ab"
    assert cut(tokenizer, [*ids[:2], tokenizer.eos_id, *ids[2:]], ["z"]) == "ab"


def test_contexts_longer_than_the_model_keep_their_latest_tokens():
    lm = language_model("ar")
    model = HdlmLM(lm, progress=False)
    long_context = "ab" * 40  # 80 tokens, the window holds 24
    [(score, _)] = model.loglikelihood([Instance("loglikelihood", {}, (long_context, "c"), 0)])
    [(kept, _)] = model.loglikelihood([Instance("loglikelihood", {}, (long_context[-23:], "c"), 0)])
    assert score == pytest.approx(kept, abs=1e-5)


def test_the_command_line(tmp_path, capsys):
    checkpoint = str(language_model("ar").save(tmp_path / "ar"))
    tasks = str(write_tasks(tmp_path / "tasks"))
    out = tmp_path / "results.json"
    args = ["harness", checkpoint, "--tasks", "toy_mc,toy_gen", "--include-path", tasks,
            "--limit", "2", "--bootstrap-iters", "0", "--no-progress",
            "--json", str(out)]  # fmt: skip
    code, text, err = run(args, capsys)
    assert code == 0, err
    assert "| toy_mc | acc |" in text
    saved = json.loads(out.read_text())
    assert saved["n-samples"]["toy_mc"]["effective"] == 2
    for extra, message in [
        (["--tasks", "no_such_task"], "no task 'no_such_task'"),
        (["--tasks", "toy_mc", "--limit", "0"], "--limit"),
        (["--tasks", " , "], "--tasks"),
    ]:
        code, _, err = run(["harness", checkpoint, "--include-path", tasks, *extra], capsys)
        assert code == 2 and message in error_line(err), err
