"""EleutherAI's lm-evaluation-harness for hdlm checkpoints: `HdlmLM` (an `lm_eval` LM, registered
as model `hdlm`) and `run_harness`, behind `hdlm harness RUN --tasks ...` (docs/metrics.md).

* `loglikelihood` (multiple choice, LAMBADA, ...): log p(continuation | context) from
  `scoring.score_requests` — exact for ar and for a3 (in `score_order`), the negative
  conditional NELBO (a lower bound on log p, `mc_samples` Monte Carlo draws) for mdlm /
  eps-hybrid. Contexts longer than the model's block leave their oldest tokens out.
* `loglikelihood_rolling` (perplexity tasks): each document after BOS in blocks of the model's
  block length (the zero-shot `blocks` protocol; `stride` for a sliding window) — every family.
  (`stride` applies here only: a `loglikelihood` continuation gets all the context that fits,
  and one longer than the block is scored in blocks.)
* `generate_until`: any sampler and its options (`sampling.fill`: `sampler`, `steps`,
  `schedule`, `eta`, `order`, `group_size`, ...), greedy unless the task asks for sampling
  (temperature, top_k, top_p given to `HdlmLM` override the task's); generation stops at EOS
  and is cut at the first stop sequence. The prompt keeps at least half the block (its oldest tokens
  leave first), the generation gets the rest, up to the task's `max_gen_toks`.

Requests are batched (`batch_size`) with a progress bar; generation batches prompts of one
length (the samplers fill one layout per batch).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm import tqdm

from hdlm.errors import HdlmError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as e:  # the optional `harness` extra
    raise HdlmError("the lm-evaluation-harness adapter needs `pip install 'hdlm[harness]'`") from e

from hdlm import sampling
from hdlm.eval.perplexity import one_step_per_blank
from hdlm.eval.scoring import encode_pair, is_exact, score_requests
from hdlm.model import LanguageModel, load
from hdlm.sampling.registry import cli_options

DEFAULT_MAX_GEN_TOKS = 256  # lm-evaluation-harness' default


def _flag_value(value: str) -> bool:
    return str(value).lower() in ("1", "true", "yes")


# generation options (`sampling.fill`: the token choice, and every sampler option of the
# registry) and how to read them from lm-eval's `--model_args` strings
GENERATION_OPTIONS = {"sampler": str, "temperature": float, "top_k": int, "top_p": float} | {
    option.name: _flag_value if option.kind is bool else option.parse or option.kind
    for option in cli_options().values()
    if option.cli
}
PICK = ("temperature", "top_k", "top_p")  # the task's generation_kwargs unless given here


def _number(value, kind=int):
    """lm-eval passes `--model_args` values as strings; None and '' stay None."""
    if value in (None, "", "None"):
        return None
    return value if not isinstance(value, str) or kind is str else kind(value)


@register_model("hdlm")
class HdlmLM(LM):
    """An hdlm `LanguageModel` as an lm-evaluation-harness model.

    `pretrained`: a run or checkpoint directory, or a loaded `LanguageModel`. Scoring options:
    `mc_samples` (diffusion bounds), `stride` (sliding window), `score_order` /
    `score_group_size` (a3 factorisation). `precision`: the weights' dtype, cast once at load
    (fp32, the reference, or bf16; `LanguageModel.cast`; a model given as `pretrained` is cast
    in place). Generation options (`GENERATION_OPTIONS`, those of
    `sampling.fill`; temperature / top_k / top_p given here override the task's) and `seed`.
    """

    def __init__(
        self,
        pretrained: str | LanguageModel,
        device: str = "cpu",
        batch_size: int | str = 16,
        mc_samples: int | None = None,
        stride: int | None = None,
        score_order: str | None = None,
        score_group_size: int | None = None,
        seed: int = 0,
        progress: bool = True,
        precision: str = "fp32",
        **generation,
    ) -> None:
        super().__init__()
        unknown = set(generation) - set(GENERATION_OPTIONS)
        if unknown:
            raise HdlmError(f"unknown hdlm model argument(s): {', '.join(sorted(unknown))}")
        if isinstance(pretrained, LanguageModel):
            lm = pretrained.cast(precision) if precision != "fp32" else pretrained
        else:
            lm = load(pretrained, device, precision)
        self.lm, self._device = lm, lm.device
        self.batch_size = _number(batch_size) or 16
        self.scoring = {
            "mc_samples": _number(mc_samples),
            "stride": _number(stride),
            "order": score_order or None,
            "group_size": _number(score_group_size),
        }
        self.generation = {
            k: _number(v, GENERATION_OPTIONS[k]) for k, v in generation.items() if v is not None
        }
        self.seed, self.progress = int(seed), progress in (True, "True", "true", "1")

    @property
    def tokenizer_name(self) -> str:
        return f"hdlm-{self.lm.tokenizer.fingerprint}"

    @property
    def max_length(self) -> int:
        """Tokens per window, BOS included: the block length the model was trained on."""
        return self.lm.config.data.seq_len

    def _score(self, requests, desc: str, stride: int | None = None) -> list:
        options = self.scoring | {"stride": stride}
        return score_requests(
            self.lm, requests, self.batch_size, progress=self.progress, desc=desc, **options
        )

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [encode_pair(self.lm.tokenizer, *req.args) for req in requests]
        out = [(s.logprob, s.is_greedy) for s in self._score(pairs, "loglikelihood")]
        for req, result in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        docs = [([], self.lm.tokenizer.encode(req.args[0])) for req in requests]
        stride = self.scoring["stride"] or self.max_length - 1
        out = [s.logprob for s in self._score(docs, "loglikelihood_rolling", stride)]
        for req, result in zip(requests, out, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, result)
        return out

    def generate_until(self, requests) -> list[str]:
        jobs = [self._generation_job(*req.args) for req in requests]
        groups = defaultdict(list)  # one sampler call per (prompt length, new tokens, options)
        for i, job in enumerate(jobs):
            groups[(len(job["prompt"]), job["new"], json.dumps(job["pick"]))].append(i)
        out = [""] * len(jobs)
        batches = [
            rows[k : k + self.batch_size]
            for rows in groups.values()
            for k in range(0, len(rows), self.batch_size)
        ]
        for b, rows in enumerate(tqdm(batches, desc="generate_until", disable=not self.progress)):
            for i, text in zip(rows, self._generate([jobs[i] for i in rows], b), strict=True):
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generation_job(self, context: str, gen_kwargs: dict) -> dict:
        """Prompt ids (left-truncated), number of new tokens, token choice and stop strings."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        width = self.max_length - 1
        prompt = self.lm.tokenizer.encode(context)
        new = min(int(kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS)),
                  width - min(len(prompt), width // 2))  # fmt: skip
        prompt = prompt[len(prompt) - (width - new) :] if len(prompt) > width - new else prompt
        sample = kwargs.pop("do_sample", None)  # as lm-eval's HF models: a temperature > 0
        temperature = float(kwargs.pop("temperature", 1.0 if sample else 0.0))  # samples
        pick = {"temperature": 0.0 if sample is False else temperature}
        pick.update({k: kwargs[k] for k in ("top_k", "top_p") if kwargs.get(k) is not None})
        return {"prompt": prompt, "new": max(new, 1), "pick": pick, "until": until}

    def _generate(self, jobs: list[dict], batch: int) -> list[str]:

        tokenizer, first = self.lm.tokenizer, jobs[0]
        given = 1 + len(first["prompt"])
        tokens = torch.tensor(
            [[tokenizer.bos_id, *job["prompt"], *[tokenizer.mask_id] * job["new"]] for job in jobs]
        ).to(self.lm.device)
        known = (torch.arange(tokens.shape[1]) < given).to(self.lm.device)
        options = one_step_per_blank(self.lm, first["pick"] | self.generation, first["new"])
        filled = sampling.fill(self.lm, tokens, known, seed=self.seed + batch, **options)
        return [
            cut(tokenizer, row[given:].tolist(), job["until"])
            for row, job in zip(filled, jobs, strict=True)
        ]


def cut(tokenizer, ids: Sequence[int], until: Sequence[str]) -> str:
    """The text of `ids` up to the first EOS, then up to the first stop string."""
    if tokenizer.eos_id in ids:
        ids = ids[: list(ids).index(tokenizer.eos_id)]
    text = tokenizer.decode(ids)
    stops = [text.find(s) for s in until if s and s in text]
    return text[: min(stops)] if stops else text


def task_manager(tasks: Sequence[str], include_path: str | None = None):
    """lm-eval's task index: of `include_path` alone when it holds every task (indexing the
    built-in tasks takes seconds), else of the built-in tasks and `include_path`."""
    from lm_eval.tasks import TaskManager  # (lm_eval's task index: heavy, loaded when run)

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(local.match_tasks([name]) for name in tasks):
            return local
    return TaskManager(include_path=include_path)


def run_harness(
    model: HdlmLM,
    tasks: Sequence[str],
    include_path: str | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    bootstrap_iters: int = 100_000,
    seed: int = 0,
) -> dict:
    """Run lm-evaluation-harness `tasks` on `model`; the JSON-able part of its results plus
    what hdlm did (`hdlm` key)."""
    from lm_eval import simple_evaluate  # (the evaluator: heavy, loaded when tasks run)

    manager = task_manager(tasks, include_path)
    unknown = [name for name in tasks if not manager.match_tasks([name])]
    if unknown:
        raise HdlmError(
            f"lm-evaluation-harness has no task '{unknown[0]}'; check the name (lm-eval ls "
            "tasks) or give --include-path DIR for local task YAML files"
        )
    try:
        results = simple_evaluate(
            model=model, tasks=list(tasks), task_manager=manager, limit=limit,
            num_fewshot=num_fewshot, bootstrap_iters=bootstrap_iters, log_samples=False,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed,
        )  # fmt: skip
    except OSError as e:  # datasets that cannot be downloaded (offline, wrong name)
        reason = next(iter(str(e).splitlines()), type(e).__name__)
        raise HdlmError(
            f"lm-evaluation-harness could not load the data of {', '.join(tasks)} ({reason}); "
            "hub datasets need internet, or point a local task YAML at local files"
        ) from e
    lm = model.lm
    keep = ("results", "groups", "n-shot", "n-samples", "versions", "higher_is_better")
    out = {key: results[key] for key in keep if key in results}
    out["hdlm"] = {
        "checkpoint": str(lm.config.out_path),
        "family": lm.config.family,
        "window": model.max_length,
        "scoring": model.scoring,
        "generation": model.generation,
        "loglikelihood": "exact" if is_exact(lm) else "-NELBO (lower bound)",
        "lm_eval_version": results.get("lm_eval_version"),
    }
    return json.loads(json.dumps(out, default=_json_value))


def _json_value(value):
    """numpy scalars and other non-JSON values as numbers or strings."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else str(number)


def results_table(results: dict) -> str:
    """A markdown table of every task's metrics (value ± stderr where known)."""
    lines = ["| task | metric | value | stderr |", "|---|---|---|---|"]
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            name, _, _ = key.partition(",")
            if name in ("alias", "name", "sample_len") or name.endswith("_stderr"):
                continue
            stderr = metrics.get(key.replace(name, f"{name}_stderr", 1), "")
            shown = f"{value:.4f}" if isinstance(value, float) else value
            err = f"{stderr:.4f}" if isinstance(stderr, float) else stderr
            lines.append(f"| {task} | {name} | {shown} | {err} |")
    return "\n".join(lines)
