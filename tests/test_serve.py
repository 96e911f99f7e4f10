"""`hdlm serve` (`hdlm.serve`): the OpenAI-compatible API, the live view's stream, the queue,
the API key, bad requests, and the command line. In-process (FastAPI's TestClient) except where
a real socket is the point (a client that disconnects, SIGTERM)."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest
import torch
from helpers import language_model

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from live_server import running  # noqa: E402

from hdlm.eval.scoring import score_requests  # noqa: E402
from hdlm.sampling.trace import Trace, trace_states, write_trace  # noqa: E402
from hdlm.serve.app import create_app  # noqa: E402
from hdlm.serve.live import LiveTrace  # noqa: E402
from hdlm.serve.worker import Busy, Cancelled, ModelWorker  # noqa: E402

MODELS: dict = {}


def model(family):
    """One tiny random model per family for the whole file (sampling does not change it)."""
    if family not in MODELS:
        MODELS[family] = language_model(family)
    return MODELS[family]


def client(family="ar", **options):
    return TestClient(create_app(model(family), family, **options))


def sse(text):
    """(event, data) of each server-sent event of a body."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        data = fields["data"]
        out.append((fields.get("event", "message"), data if data == "[DONE]" else json.loads(data)))
    return out


def test_models_lists_the_served_model():
    with client() as c:
        reply = c.get("/v1/models").json()
    assert [m["id"] for m in reply["data"]] == ["ar"]
    assert reply["data"][0]["family"] == "ar"


@pytest.mark.parametrize("family,options", [("ar", {}), ("mdlm", {"steps": 8}),
                                            ("a3", {"group_size": 2})])  # fmt: skip
def test_a_completion_is_what_lm_sample_draws_with_the_same_seed(family, options):
    lm = model(family)
    prompt_ids = lm.tokenizer.encode("abc")
    with client(family) as c:
        reply = c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 6, "seed": 5,
                                                "n": 2, **options})  # fmt: skip
    assert reply.status_code == 200, reply.text
    expected = lm.sample(2, 1 + len(prompt_ids) + 6, prompt="abc", seed=5, **options)
    rows = [row[1 + len(prompt_ids) :].tolist() for row in expected]
    eos = lm.tokenizer.eos_id
    texts = [lm.tokenizer.decode(row[: row.index(eos)] if eos in row else row) for row in rows]
    body = reply.json()
    assert [ch["text"] for ch in body["choices"]] == texts  # (cut at the first EOS)
    assert [ch["finish_reason"] for ch in body["choices"]] == [
        "stop" if eos in row else "length" for row in rows
    ]
    assert body["usage"]["prompt_tokens"] == 2 * len(prompt_ids)


def test_echo_and_logprobs_are_the_exact_scores_of_an_ar_model():
    lm = model("ar")
    with client() as c:
        body = c.post("/v1/completions", json={"prompt": "helloworld", "max_tokens": 0,
                                               "echo": True, "logprobs": 3}).json()  # fmt: skip
    logprobs = body["choices"][0]["logprobs"]
    assert body["choices"][0]["text"] == "helloworld"
    assert logprobs["tokens"] == list("helloworld") and logprobs["bound"] is False
    (expected,) = score_requests(lm, [([], lm.tokenizer.encode("helloworld"))])
    assert sum(logprobs["token_logprobs"]) == pytest.approx(expected.logprob, abs=1e-4)
    for value, top in zip(logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert len(top) == 3 and max(top.values()) >= value


def test_logprobs_are_flagged_as_bounds_for_diffusion_and_refused_without_one():
    with client("mdlm") as c:
        body = c.post("/v1/completions", json={"prompt": "ab", "max_tokens": 2, "logprobs": 0,
                                               "steps": 4}).json()  # fmt: skip
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["bound"] is True and len(logprobs["token_logprobs"]) == 2
    with client("gamma-hybrid") as c:
        reply = c.post("/v1/completions", json={"prompt": "ab", "logprobs": 1})
    assert reply.status_code == 400 and "per-token" in reply.json()["error"]["message"]


def test_stop_sequences_cut_the_text_and_say_why():
    with client() as c:
        free = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 12, "seed": 1}).json()
        text = free["choices"][0]["text"]
        stop = text[3:5]
        cut = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 12, "seed": 1,
                                              "stop": [stop]}).json()  # fmt: skip
    assert cut["choices"][0]["text"] == text[: text.index(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert free["choices"][0]["finish_reason"] in ("length", "stop")


def test_streamed_completions_are_sse_chunks_ending_with_done():
    request = {"prompt": ["ab", "cd"], "max_tokens": 4, "seed": 2}
    with client() as c:
        whole = c.post("/v1/completions", json=request).json()
        streamed = c.post("/v1/completions", json={**request, "stream": True})
    events = sse(streamed.text)
    assert events[-1][1] == "[DONE]"
    texts = [data["choices"][0]["text"] for _, data in events[:-1]]
    assert texts == [ch["text"] for ch in whole["choices"]] and len(texts) == 2


def test_infill_fills_the_blanks_as_lm_sample_does():
    lm = model("mdlm")
    with client("mdlm") as c:
        body = c.post("/v1/infill", json={"prompt": "ab___[3]cd", "seed": 4, "steps": 6}).json()
    expected = lm.decode(lm.sample(1, infill="ab___[3]cd", seed=4, steps=6))
    assert [ch["text"] for ch in body["choices"]] == expected


def test_score_is_score_choices_and_says_whether_it_is_a_bound():
    lm = model("a3")
    with client("a3") as c:
        body = c.post("/v1/score", json={"context": "ab", "choices": ["c", "dd"]}).json()
    expected = [s.logprob for s in lm.score_choices("ab", ["c", "dd"])]
    assert [ch["logprob"] for ch in body["choices"]] == pytest.approx(expected)
    assert body["bound"] is False


BAD = [
    ("malformed JSON", b'{"prompt": ', "malformed JSON"),
    ("not an object", b"[1, 2]", "JSON object"),
    ("unknown field", {"prompt": "a", "colour": "red"}, "unknown field(s) colour"),
    ("missing prompt", {"max_tokens": 3}, "missing field 'prompt'"),
    ("temperature < 0", {"prompt": "a", "temperature": -1}, "temperature"),
    ("top_p > 1", {"prompt": "a", "top_p": 1.5}, "top_p"),
    ("wrong type", {"prompt": "a", "max_tokens": "many"}, "max_tokens"),
    ("option of another sampler", {"prompt": "a", "eta": 0.1}, "--eta does not apply"),
    ("option out of range", {"prompt": "a", "sampler": "acs", "eta": 2.0}, "--eta 2.0 must lie"),
    ("option of wrong type", {"prompt": "a", "sampler": "acs", "steps": 1.5}, "steps must be"),
    ("zero steps", {"prompt": "a", "sampler": "acs", "steps": 0}, "--steps 0 must lie"),
    ("unknown sampler", {"prompt": "a", "sampler": "magic"}, "unknown sampler 'magic'"),
    ("too long", {"prompt": "a" * 70, "max_tokens": 1}, "longer than the model's context"),
    ("bad token id", {"prompt": [1, 99999]}, "token ids must lie"),
]


@pytest.mark.parametrize("body,message", [(b, m) for _, b, m in BAD],
                         ids=[name for name, _, _ in BAD])  # fmt: skip
def test_a_bad_request_is_one_clear_400_and_the_server_keeps_serving(body, message):
    with client() as c:
        data = {"content": body} if isinstance(body, bytes) else {"json": body}
        reply = c.post("/v1/completions", **data)
        assert reply.status_code == 400
        assert message in reply.json()["error"]["message"]
        assert c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200


def test_other_endpoints_check_their_bodies_too():
    with client("a3") as c:
        assert (
            "unknown field 'extra'"
            in c.post("/v1/score", json={"context": "a", "choices": ["b"], "extra": 1}).json()[
                "error"
            ]["message"]
        )
        assert c.post("/v1/score", json={"context": "a", "choices": []}).status_code == 400
        assert "no blank" in c.post("/v1/infill", json={"prompt": "abc"}).json()["error"]["message"]
        groups = c.post("/v1/infill", json={"prompt": "a___[2]", "groups": "@/etc/passwd"})
        assert "not @FILE" in groups.json()["error"]["message"]
        long = c.post("/v1/denoise", json={"prompt": "ab", "length": 1000})
        assert long.status_code == 400 and "context" in long.json()["error"]["message"]


def test_a_full_queue_answers_503_with_retry_after():
    app = create_app(model("ar"), "ar", max_waiting=1)
    release = threading.Event()
    worker = app.state.server.worker
    with TestClient(app) as c:
        running_job = worker.submit(release.wait)  # holds the worker
        while not running_job.running():  # until the worker took it off the queue
            threading.Event().wait(0.01)
        waiting_job = worker.submit(lambda: None)  # fills the queue (one place)
        reply = c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2})
        assert reply.status_code == 503 and int(reply.headers["Retry-After"]) >= 1
        release.set()
        waiting_job.result()
        assert c.post("/v1/completions", json={"prompt": "a", "max_tokens": 2}).status_code == 200


def test_the_worker_skips_cancelled_jobs_and_survives_failing_ones():
    worker = ModelWorker(max_waiting=2)
    release = threading.Event()
    first = worker.submit(release.wait)
    while not first.running():
        threading.Event().wait(0.01)
    skipped = worker.submit(lambda: 1)
    worker.submit(lambda: 2)
    with pytest.raises(Busy):
        worker.submit(lambda: 3)
    skipped.cancel()
    release.set()
    first.result()
    failing = worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result()
    assert worker.submit(lambda: 7).result() == 7
    worker.close()


def test_the_api_key_guards_every_endpoint():
    with client(api_key="s3cret") as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/?api_key=s3cret").status_code == 200


def test_the_page_is_served_and_its_controls_come_from_the_registry():
    with client("mdlm") as c:
        assert "<title>hdlm serve</title>" in c.get("/").text
        info = c.get("/v1/samplers").json()
    acs = next(s for s in info["samplers"] if s["name"] == "acs")
    eta = next(o for o in acs["options"] if o["name"] == "eta")
    assert (eta["default"], eta["low"], eta["high"]) == (0.015, 0.0, 1.0)
    assert info["samplers"][0]["name"] == "ancestral"  # the family's own first
    assert info["states"][:3] == ["masked", "visible", "revealed"]


def denoise(family, **request):
    with client(family) as c:
        reply = c.post("/v1/denoise", json={"seed": 3, **request})
    assert reply.status_code == 200, reply.text
    events = sse(reply.text)
    assert events[-1][0] == "done"
    return [data for event, data in events if event == "frame"], events[-1][1]


def test_the_live_stream_of_an_ar_model_grows_left_to_right_to_lm_sample():
    lm = model("ar")
    frames, done = denoise("ar", prompt="ab", length=12)
    assert done["text"] == lm.decode(lm.sample(1, 12, prompt="ab", seed=3))[0]
    assert len(frames) == 12 - 3  # one step per token after BOS and the prompt
    for k, frame in enumerate(frames):
        revealed = [i for i, s in enumerate(frame["states"]) if s == 2]
        assert revealed == [2 + k]  # the newest token, after the prompt's two
    assert "".join(frames[-1]["pieces"]) == done["text"]


@pytest.mark.parametrize("family,request_options,steps", [
    ("mdlm", {"sampler": "acs", "steps": 7}, 7),
    ("gamma-hybrid", {"steps": 5}, 5),
    ("a3", {"group_size": 3}, 3),  # 9 positions to fill, three per group
])  # fmt: skip
def test_every_family_streams_its_steps_and_ends_on_the_sampled_text(
    family, request_options, steps
):
    lm = model(family)
    frames, done = denoise(family, prompt="a", length=11, **request_options)
    expected = lm.sample(1, 11, prompt="a", seed=3, **request_options)
    assert done["text"] == lm.decode(expected)[0]
    assert len(frames) == steps == done["steps"]
    assert all(len(f["states"]) == 10 for f in frames)
    assert 0 not in frames[-1]["states"]  # nothing left masked


def test_a_template_with_blanks_streams_an_infill():
    lm = model("a3")
    frames, done = denoise("a3", prompt="ab___[2]cd")
    assert done["text"] == lm.decode(lm.sample(1, infill="ab___[2]cd", seed=3))[0]
    assert len(frames) == 2


class WaitingTrace(LiveTrace):
    """A live trace whose second step waits until the server tells it to stop: the sampler is
    surely still running when the client goes away."""

    def add(self, tokens, **events):
        if self.tokens:
            self.stop.wait()
        super().add(tokens, **events)


def test_a_client_that_disconnects_mid_stream_frees_the_worker(monkeypatch):
    monkeypatch.setattr("hdlm.serve.app.LiveTrace", WaitingTrace)
    app = create_app(model("mdlm"), "mdlm")
    worker = app.state.server.worker
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        request = {"prompt": "a", "length": 20, "steps": 10}
        with http.stream("POST", "/v1/denoise", json=request) as reply:
            assert next(reply.iter_lines()) == "event: frame"
        while worker.cancelled == 0:  # the disconnect sets `stop`: the next step raises
            threading.Event().wait(0.01)
        reply = http.post("/v1/completions", json={"prompt": "a", "max_tokens": 2, "steps": 2})
        assert reply.status_code == 200


def test_a_live_trace_stops_the_sampler_when_told():
    lm = model("mdlm")
    trace = LiveTrace(send=lambda frame: trace.stop.set(), tokenizer=lm.tokenizer)
    with pytest.raises(Cancelled):
        lm.sample(1, 10, steps=5, trace=trace)
    assert len(trace.tokens) == 1


@pytest.mark.parametrize(
    "family,options,steps",
    [("ar", {}, 9), ("gamma-hybrid", {"steps": 4}, 4), ("gamma-hybrid", {"sampler": "euler"}, 128)],
)
def test_ar_and_tau_leaping_record_traces_too(tmp_path, family, options, steps):
    lm = model(family)
    trace = Trace()
    tokens = lm.sample(1, 12, prompt="ab", seed=0, trace=trace, **options)
    assert len(trace.tokens) == steps  # ar: one token per step after BOS and the prompt
    assert torch.equal(trace.tokens[-1], tokens)
    states = trace_states(trace, lm.tokenizer.mask_id)
    assert (states[:, :2] == 1).all()  # the prompt stays visible
    assert write_trace(trace, lm.tokenizer, tmp_path / "t.html").exists()


def test_serve_refuses_a_bad_port_in_one_line(capsys):
    from hdlm.cli import main

    assert main(["serve", "somewhere", "--port", "70000"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_sigterm_stops_the_server_gracefully(tmp_path):
    model("ar").save(tmp_path / "ar")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "hdlm", "serve", str(tmp_path / "ar"), "--port", "0"]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:  # uvicorn logs its address once it listens
            if "Uvicorn running on" in line:
                break
        server.send_signal(signal.SIGTERM)
        rest = server.stderr.read()
        assert server.wait(timeout=60) == 0
        assert "Finished server process" in rest
    finally:
        server.kill()
