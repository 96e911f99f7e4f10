"""The lm-evaluation-harness adapter (`hdlm.eval.harness`, `hdlm harness`): local tasks of the three
request kinds run end to end for an ar, a diffusion and an a3 checkpoint, and their metrics are
the adapter's own scores."""

import json
import math

import pytest
import torch
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


def write_tasks(folder, prompts=PROMPTS):
    """Three local tasks: multiple choice, rolling perplexity and generate-until (`prompts`)."""
    folder.mkdir()
    data = {"toy_mc": MC, "toy_ppl": [{"text": d} for d in DOCS], "toy_gen": prompts}
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
    # generate-until: the first answer is the adapter's own greedy text, the second is not
    texts = model.generate_until(
        [Instance("generate_until", {}, (p["prompt"], {"until": ["q"], "max_gen_toks": 3}), i)
         for i, p in enumerate(PROMPTS)]
    )  # fmt: skip
    assert [len(model.lm.tokenizer.encode(t)) for t in texts] == [3, 3]  # no EOS, no "q"
    prompts = [PROMPTS[0] | {"answer": texts[0]}, PROMPTS[1] | {"answer": texts[1] + "!"}]
    tasks = write_tasks(tmp_path / "tasks", prompts)
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
    # rolling perplexity: the exact log-likelihood (ar, a3) of each document after BOS in blocks
    # of the model's window, W = seq_len - 1 tokens each (a diffusion bound draws other levels)
    exact = family in ("ar", "a3")
    width = model.lm.config.data.seq_len - 1
    bos, nats = model.lm.tokenizer.bos_id, 0.0
    for doc in DOCS:
        ids = model.lm.tokenizer.encode(doc)
        for start in range(0, len(ids), width):
            block = torch.tensor([[bos, *ids[start : start + width]]])
            nats += model.lm.nelbo(block, samples=8).item()
    assert len(model.lm.tokenizer.encode(DOCS[0])) > width  # more than one block
    n_bytes = sum(len(d.encode()) for d in DOCS)
    if exact:
        assert metrics["toy_ppl"]["byte_perplexity,none"] == pytest.approx(
            math.exp(nats / n_bytes), rel=1e-4
        )
    assert metrics["toy_gen"]["exact_match,none"] == 0.5
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
    # without a stop string this model continues "abc" with "c"s and "xyz" with "z"s
    free = model.generate_until(
        [Instance("generate_until", {}, (p, {"until": [], "max_gen_toks": 6}), i)
         for i, p in enumerate(["abc", "xyz"])]
    )  # fmt: skip
    assert free == ["c" * 6, "z" * 6]
    assert out[:2] == ["c" * 6, "z" * 6]  # "b" is never written: nothing to cut
    stopped = [
        Instance("generate_until", {}, ("abc", {"until": ["c"], "max_gen_toks": 6}), 0),
        Instance("generate_until", {}, ("xyz", {"until": ["q", "zz"], "max_gen_toks": 6}), 1),
    ]
    assert model.generate_until(stopped) == ["", ""]
    assert len(lm.tokenizer.encode(out[2])) == 4
    # greedy by default: the same request gives the same text, and it continues the prompt
    assert model.generate_until(requests[:1]) == out[:1]
    tokenizer = lm.tokenizer
    ids = tokenizer.encode("abcdef")
    assert cut(tokenizer, ids, ["d", "c"]) == "ab"
    assert cut(tokenizer, [*ids[:2], tokenizer.eos_id, *ids[2:]], ["z"]) == "ab"


def test_diffusion_is_greedy_marks_the_most_likely_single_token():
    """For one masked token after a clean context the -NELBO of mdlm is the exact log p(v | ctx),
    so `is_greedy` (one-step greedy decoding) holds for its argmax over v and no other."""
    lm = language_model("mdlm")
    tokenizer = lm.tokenizer
    context = tokenizer.encode("abcab")
    ids = [v for v in range(tokenizer.vocab_size) if v != tokenizer.mask_id]
    scores = score_requests(lm, [(context, [v]) for v in ids], mc_samples=4)
    greedy = [s.is_greedy for s in scores]
    best = max(range(len(ids)), key=lambda i: scores[i].logprob)
    assert greedy.count(True) == 1 and greedy[best]
    probs = torch.tensor([s.logprob for s in scores]).exp()
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-4)  # exact: a distribution over v


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
