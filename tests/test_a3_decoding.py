"""A3 decoding beyond one order: explicit groupings, the confidence / entropy criteria ranked by
the distribution actually sampled from, the end of text (EOS), the trace, and every one of them
with and without the cache; the options each sampler refuses (`sampling.options`)."""

import json
import math

import pytest
import torch
from helpers import MASK, TOKENIZER, language_model, random_tokens
from test_a3 import make_config, parent_and_child, sharpen
from test_cli import error_line, run

from hdlm import a3
from hdlm.errors import HdlmError
from hdlm.eval.perplexity import infill_metrics, middle_span
from hdlm.model.a3 import A3Transformer
from hdlm.sampling import settings
from hdlm.sampling.a3 import decode, given_groups
from hdlm.sampling.a3_groups import explicit_steps, parse_groups
from hdlm.sampling.ar import sample_ar
from hdlm.sampling.tokens import certainty
from hdlm.sampling.trace import Trace

EOS = 0  # the tiny vocabularies' BOS, which doubles as EOS
LENGTH = 24
KNOWN = torch.zeros(LENGTH, dtype=torch.bool)
KNOWN[[0, 1, 2, 9, 10, 20]] = True  # a prompt, givens in the middle, a short open tail 21..23
GROUPS = [[23, 22], [3, 4, 5, 6, 7, 8], [11, 12, 13, 14, 15, 16, 17, 18, 19], [21]]


def sharp_net(seed=0, std=0.1):
    torch.manual_seed(seed)
    return sharpen(A3Transformer(make_config().model), std)


def favour(net, token, bonus):
    """Add `bonus` to the logit of `token` in every prediction (a hook on the head)."""

    def hook(module, inputs, output):
        output[..., token] += bonus
        return output

    return net.head.register_forward_hook(hook)


def draw(net, tokens, known=KNOWN, use_cache=True, seed=2, **options):
    generator = torch.Generator().manual_seed(seed)
    return decode(net, tokens, known, MASK, generator, use_cache=use_cache, **options)


def per_position(groups, known=KNOWN):
    """The same grouping as a group id per position (0 at given positions)."""
    ids = torch.zeros(len(known), dtype=torch.long)
    for g, group in enumerate(groups):
        ids[group] = 10 * (g + 1)  # ids need not be consecutive
    return ids


@pytest.mark.parametrize(
    "options",
    [
        {"order": "entropy"},
        {"order": "entropy", "group_size": 3, "temperature": 0.7, "top_k": 5},
        {"order": "confidence", "group_size": 2, "top_p": 0.8},
        {"groups": GROUPS},
        {"groups": per_position(GROUPS), "group_size": 2},
        {"order": "left-to-right", "group_size": 3, "stop_id": EOS},
        {"order": "random", "group_size": 2, "stop_id": EOS},
        {"order": "confidence", "group_size": 2, "stop_id": EOS},
        {"order": "entropy", "stop_id": EOS},
        {"groups": GROUPS, "stop_id": EOS},
    ],
)
def test_every_order_keeps_given_tokens_and_the_cache_changes_nothing(options):
    net = sharp_net(std=0.3)  # peaked: no near-ties between positions' certainties
    hook = favour(net, EOS, 3.0) if "stop_id" in options else None  # EOS happens, often
    tokens = random_tokens(6, LENGTH)
    cached, uncached = draw(net, tokens, use_cache=True, **options), draw(net, tokens, **{
        **options, "use_cache": False})  # fmt: skip
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, KNOWN], tokens[:, KNOWN])
    assert not (cached == MASK).any()
    if hook is not None:
        hook.remove()
        tail = cached[:, 21:]
        assert (tail == EOS).any()  # the stop was exercised
        for row in tail:  # after the first EOS of the tail, only EOS
            first = (row == EOS).nonzero()
            if len(first):
                assert (row[first[0, 0] :] == EOS).all()


def test_explicit_groups_are_the_orders_they_spell_out():
    net = sharp_net()
    tokens = random_tokens(3, LENGTH)
    unknown = (~KNOWN).nonzero()[:, 0].tolist()
    in_threes = [unknown[i : i + 3] for i in range(0, len(unknown), 3)]
    ordered = draw(net, tokens, order="left-to-right", group_size=3)
    assert torch.equal(draw(net, tokens, groups=in_threes), ordered)
    assert torch.equal(draw(net, tokens, groups=per_position(in_threes)), ordered)
    trace = Trace()
    draw(net, tokens, groups=GROUPS, trace=trace)
    assert len(trace.tokens) == len(GROUPS)
    for step, group in zip(trace.revealed, GROUPS, strict=True):
        expected = torch.zeros(LENGTH - 1, dtype=torch.bool)
        expected[[p - 1 for p in group]] = True  # (the trace leaves BOS out)
        assert torch.equal(step, expected.expand(3, -1))


@pytest.mark.parametrize("criterion", ["confidence", "entropy"])
def test_dynamic_orders_rank_by_the_distribution_sampled_from(criterion):
    """The first position committed is the surest under temperature / top-k as sampled, which
    for some networks is not the surest under the raw model (the test has teeth)."""
    known = torch.zeros(LENGTH, dtype=torch.bool)
    known[[0, 1, 2, 12]] = True
    pick = {"temperature": 2.5, "top_k": 2}
    differs = 0
    for seed in range(8):
        net = sharp_net(seed, std=0.3)
        tokens = random_tokens(1, LENGTH)
        start = torch.where(known, tokens, MASK)
        with torch.no_grad():
            groups = given_groups(known, 1)[None]
            log_probs = a3.target_log_probs(net, start, groups, MASK)[0]
        unknown = ~known[1:]
        shaped = torch.where(unknown, certainty(log_probs, criterion, **pick), -math.inf)
        raw = torch.where(unknown, certainty(log_probs, criterion), -math.inf)
        trace = Trace()
        draw(net, tokens, known, order=criterion, trace=trace, **pick)
        first = trace.revealed[0][0].nonzero()[:, 0].tolist()
        assert first == [int(shaped.argmax())]
        differs += int(shaped.argmax() != raw.argmax())
    assert differs > 0


def test_certainty_of_filtered_distributions_is_finite():
    log_probs = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.1, 0.2, 0.3, 0.4]]).log()
    assert torch.allclose(certainty(log_probs, "confidence"), torch.tensor([0.5, 0.4]).log())
    entropy = -certainty(log_probs, "entropy")
    expected = torch.tensor([-sum(p * math.log(p) for p in row if p > 0)
                             for row in log_probs.exp().tolist()])  # fmt: skip
    assert torch.allclose(entropy, expected)
    greedy = {"temperature": 0.0, "top_k": 1}  # one token left: certain
    assert torch.equal(certainty(log_probs, "entropy", **greedy), torch.zeros(2))
    assert torch.equal(certainty(log_probs, "confidence", **greedy), torch.zeros(2))


# -- the end of text ------------------------------------------------------------------------------


def test_left_to_right_with_eos_stop_is_ar_sampling_cut_at_the_first_eos():
    parent, child = parent_and_child(make_config())
    favour(parent, EOS, 1.5), favour(child, EOS, 1.5)
    prefix = torch.tensor([[0, 5, 6]]).expand(8, -1)
    reference = sample_ar(parent, prefix, 20, torch.Generator().manual_seed(5), MASK)
    tokens = torch.cat((prefix, torch.full((8, 17), MASK)), 1)
    ours = draw(child, tokens, torch.arange(20) < 3, seed=5, stop_id=EOS)
    expected = reference.clone()
    for row in expected:
        eos = (row[3:] == EOS).nonzero()
        if len(eos):
            row[3 + eos[0, 0] :] = EOS
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, reference)  # some row did stop early
    # one row that stops: decoding ends at its EOS (one step per token up to it)
    trace = Trace()
    row = int((expected != reference).any(1).nonzero()[0, 0])
    one = draw(child, tokens[row : row + 1], torch.arange(20) < 3, trace=trace, stop_id=EOS,
               seed=5)  # fmt: skip
    first = int((one[0, 3:] == EOS).nonzero()[0, 0]) + 3
    assert len(trace.tokens) == first - 2


def test_eos_closes_the_tail_in_any_order_but_not_a_blank_before_given_text(monkeypatch):
    from hdlm.sampling.a3 import Decoding

    original = Decoding.commit

    def once(self, chosen, new):  # no open position is committed twice in one step
        for row, is_open in zip(chosen, self.open.gather(1, chosen), strict=True):
            assert len(set(row[is_open].tolist())) == int(is_open.sum())
        return original(self, chosen, new)

    monkeypatch.setattr(Decoding, "commit", once)
    net = sharp_net(1)
    favour(net, EOS, 2.5)
    tokens = random_tokens(6, LENGTH)
    known = torch.zeros(LENGTH, dtype=torch.bool)
    known[[0, 1, 2, 9]] = True  # a blank 3..8 before given text, then the open tail 10..23
    for order, size in (("random", 2), ("confidence", 2), ("entropy", 5)):
        trace = Trace()
        out = draw(net, tokens, known, order=order, group_size=size, stop_id=EOS, trace=trace)
        committed = torch.stack(trace.revealed).sum(0)  # [n, L-1], how often each was committed
        assert committed.max() == 1
        assert not (out == MASK).any() and committed[:, 2:8].all()  # the blank is always filled
        tail = out[:, 10:]
        ended = 0
        for r, row in enumerate(tail):
            eos = (row == EOS).nonzero()
            if len(eos):
                end = 10 + int(eos[0, 0])
                assert (out[r, end:] == EOS).all()
                ended += int(committed[r, end:].sum() < LENGTH - 1 - end)  # closed, not decoded
        assert ended > 0
    plain = draw(net, tokens, known, order="random", group_size=2)
    assert torch.equal(plain, draw(net, tokens, known, order="random", group_size=2, stop_id=None))


# -- explicit groupings: syntax and checks --------------------------------------------------------


def test_groups_syntax(tmp_path):
    assert parse_groups("1-3,4-7,8+10,9") == [[1, 2, 3], [4, 5, 6, 7], [8, 10], [9]]
    path = tmp_path / "order.txt"
    path.write_text("4 - 5\n1+2\n\n3\n")
    assert parse_groups(f"@{path}") == [[4, 5], [1, 2], [3]]
    for spec, error in [("1-3,x", "'x' is not a position"), ("5-2", "range '5-2' is empty"),
                        (" , ", "lists no positions"), ("1+", "'' is not a position"),
                        (f"@{tmp_path / 'none'}", "cannot read")]:  # fmt: skip
        with pytest.raises(HdlmError, match=error):
            parse_groups(spec)


def test_a_grouping_must_cover_exactly_the_positions_to_fill():
    known = torch.tensor([True, True, False, False, False, True])
    assert [g.tolist() for g in explicit_steps([[4], [2, 3]], known)] == [[4], [2, 3]]
    assert [g.tolist() for g in explicit_steps([0, 0, 2, 2, 1, 0], known)] == [[4], [2, 3]]
    for groups, error in [
        ([[2, 3, 4, 6]], "position 6 is outside the sample"),
        ([[1, 2, 3, 4]], "position 1 is given"),
        ([[2, 3], [3, 4]], "position 3 is in more than one group"),
        ([[2], [4]], "leaves positions 3 unfilled"),
        ([[2, 3, 4], []], "group 2 is empty"),
        ([0, 0, 1, 1, 1], "5 group ids but the sample has 6"),
        ([0, 1, 1, 1, 1, 0], "position 1 \\(given text\\) group 1"),
        ([0, 0, 1, 0, 1, 0], "position 3 \\(to fill\\) group 0"),
    ]:
        with pytest.raises(HdlmError, match=error):
            explicit_steps(groups, known)
    net = sharp_net()
    with pytest.raises(HdlmError, match="not both"):
        draw(net, random_tokens(1, 6), known, order="random", groups=[[2, 3, 4]])
    with pytest.raises(HdlmError, match="unknown A3 order"):
        draw(net, random_tokens(1, 6), known, order="sideways")


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny saved checkpoints of the families the option checks distinguish."""
    root = tmp_path_factory.mktemp("runs")
    families = {"a3": {}, "mdlm": {}, "ar": {}, "gamma-hybrid": {"gamma": 0.2}}
    return {f: language_model(f, **options).save(root / f) for f, options in families.items()}


def test_a3_decoding_from_the_cli_with_groups_entropy_and_a_trace(runs, tmp_path, capsys):
    html, png = tmp_path / "trace.html", tmp_path / "trace.png"
    code, out, err = run(["sample", str(runs["a3"]), "-n", "2", "--length", "12", "--groups",
                          "6-11,1-5", "--trace", str(html)], capsys)  # fmt: skip
    assert code == 0, err
    assert out.count("=== sample") == 2 and f"wrote {html}" in out
    page = html.read_text()
    assert "A3 decoding trace" in page and page.count("<tr>") == 2  # one row per group
    args = ["--order", "entropy", "--group-size", "3", "--no-eos-stop", "--trace", str(png)]
    code, out, err = run(["sample", str(runs["a3"]), "--length", "12", *args], capsys)
    assert code == 0, err
    assert png.read_bytes().startswith(b"\x89PNG")
    groups = tmp_path / "groups.txt"
    groups.write_text("1-3\n4-11\n")
    code, out, err = run(["sample", str(runs["a3"]), "--length", "12", "--groups", f"@{groups}",
                          "--temperature", "0"], capsys)  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize(
    ("family", "args", "message"),
    [
        ("a3", ["--schedule", "flat:4"], "--schedule does not apply to a3 models"),
        ("a3", ["--steps", "8"], "--steps does not apply to a3 models"),
        ("a3", ["--eta", "0.1"], "--eta does not apply to a3 models"),
        ("a3", ["--order", "random", "--groups", "1-11"], "not both"),
        ("a3", ["--groups", "1-12"], "position 12 is outside the sample"),
        ("a3", ["--groups", "1-5"], "leaves positions 6, 7"),
        ("a3", ["--trace", "t.pdf"], "use a .html, .png, .svg file"),
        ("mdlm", ["--order", "random"], "--order does not apply to mdlm models"),
        ("mdlm", ["--group-size", "2"], "--group-size does not apply to mdlm models"),
        ("mdlm", ["--groups", "1-11"], "--groups does not apply to mdlm models"),
        ("mdlm", ["--no-eos-stop"], "--no-eos-stop does not apply to mdlm models"),
        ("mdlm", ["--blank-max", "3"], "--blank-max does not apply to mdlm models"),
        ("mdlm", ["--eta", "0.1"], "--eta does not apply to mdlm models \\(sampler ancestral\\)"),
        ("mdlm", ["--schedule", "block:11:2", "--steps", "4"], "--steps sets the steps of a flat"),
        ("ar", ["--steps", "4"], "--steps does not apply to ar models"),
        ("ar", ["--order", "confidence"], "--order does not apply to ar models"),
        ("gamma-hybrid", ["--no-cache"], "--no-cache does not apply to gamma-hybrid models"),
    ],
)
def test_options_that_do_not_apply_are_refused(runs, capsys, family, args, message):
    code, out, err = run(["sample", str(runs[family]), "--length", "12", *args], capsys)
    assert code == 2 and not out
    assert message in error_line(err) or __import__("re").search(message, error_line(err))


def test_eval_refuses_sampling_options_when_it_draws_nothing(runs, capsys):
    code, _, err = run(["eval", str(runs["a3"]), "--order", "random"], capsys)
    assert code == 2 and "--order changes how samples are drawn" in error_line(err)


def test_infill_metrics_use_and_report_the_decoding_settings(monkeypatch):
    import hdlm.sampling

    lm = language_model("a3")
    blocks = random_tokens(4, 25, vocab=TOKENIZER.mask_id)
    tokens, hidden = middle_span(blocks, 17, 4)
    calls = []
    original = hdlm.sampling.fill
    monkeypatch.setattr(hdlm.sampling, "fill", lambda *a, **o: calls.append(o) or original(*a, **o))
    default = infill_metrics(lm, tokens, hidden, progress=False)["fill"]
    assert default == {"sampler": "a3", "temperature": 0.0, "top_k": None, "top_p": None,
                       "seed": 0, "use_cache": True, "order": "left-to-right", "group_size": 1,
                       "groups": None, "eos_stop": True}  # fmt: skip
    chosen = {"order": "confidence", "group_size": 2, "temperature": 0.5}
    used = infill_metrics(lm, tokens, hidden, progress=False, **chosen)["fill"]
    assert used == {**default, **chosen} and calls[-1] == chosen | {"temperature": 0.5}
    mdlm = language_model("mdlm")
    assert infill_metrics(mdlm, tokens, hidden, progress=False)["fill"]["schedule"] == "flat:4"
    with pytest.raises(HdlmError, match="--order does not apply to mdlm"):
        infill_metrics(mdlm, tokens, hidden, progress=False, order="random")
    assert settings(mdlm, "acs")["eta"] == 0.015


def test_eval_infill_from_the_cli_reports_the_settings(runs, capsys, tmp_path, monkeypatch):
    # the test models were built without a corpus: point eval at a tiny synthetic one
    data = ["--set", "data.corpus=synthetic", "--set", "data.synthetic.n_docs=40",
            "--set", "data.synthetic.doc_len=40", "--set", f"data.cache_dir={tmp_path}",
            "--set", "data.tokenizer.kind=char"]  # fmt: skip
    args = ["eval", str(runs["a3"]), "--metrics", "infill", "--infill-length", "16",
            "--infill-span", "4", "--max-blocks", "3", "--order", "entropy", "--group-size", "2",
            "--temperature", "0.5", *data]  # fmt: skip
    code, out, err = run(args, capsys)
    assert code == 0, err
    fill = json.loads(out)["infill"]["fill"]
    assert (fill["order"], fill["group_size"], fill["temperature"]) == ("entropy", 2, 0.5)


@pytest.mark.parametrize("order, size", [("left-to-right", 1), ("left-to-right", 3), ("random", 2)])
def test_rows_that_end_early_do_not_break_the_others(order, size):
    """Rows end at different steps (EOS stop); from 64 positions on, topk over an ended row's
    all -inf priorities returns index 0 (BOS), whose query row would be -1: the demo's crash."""
    net = sharp_net(std=0.3)
    hook = favour(net, EOS, 1.5)  # EOS now and then: rows end at different steps
    length = 64  # the model's context
    known = torch.arange(length) < 1
    tokens = random_tokens(8, length)
    cached = draw(net, tokens, known, order=order, group_size=size, stop_id=EOS)
    with pytest.raises(HdlmError, match="longer than the model's context"):
        draw(net, random_tokens(2, length + 1), torch.arange(length + 1) < 1, use_cache=False)
    uncached = draw(net, tokens, known, use_cache=False, order=order, group_size=size,
                    stop_id=EOS)  # fmt: skip
    hook.remove()
    assert torch.equal(cached, uncached) and not (cached == MASK).any()
    ends = [int((row == EOS).nonzero()[0, 0]) for row in cached[:, 1:] if (row == EOS).any()]
    assert len(set(ends)) > 1 and min(ends) < length // 2  # some row ended long before others
