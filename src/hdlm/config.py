"""Run configuration: plain dataclasses, loaded from YAML and validated strictly.

A run is described by one `RunConfig`. YAML files under `configs/` and `--set a.b=value`
overrides on the command line are checked against these dataclasses: an unknown key, a value of
the wrong type or an inconsistent combination raises `ConfigError` with a one-line message that
names the key and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hdlm.errors import ConfigError
from hdlm.families import family
from hdlm.processes.gamma_hybrid import SigmaSchedule
from hdlm.schedules import from_spec


@dataclass
class RopeScaling:
    """Llama-3's RoPE frequency scaling (Hugging Face `rope_type: llama3`): wavelengths longer
    than original_max_position_embeddings / low_freq_factor are stretched by `factor`, shorter
    than original_max_position_embeddings / high_freq_factor kept, and blended in between."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass
class ModelConfig:
    """The transformer backbone (see `hdlm.model.Transformer`).

    The defaults are a GPT-2-like backbone; `mlp`, `d_ff`, `n_kv_heads`, `head_dim`,
    `rope_scaling`, `norm_eps`, `qk_norm` and `qkv_bias` describe Llama / Mistral / Qwen shaped
    ones, and `from_hf` takes all of them from a local Hugging Face directory (`hdlm.model.hf`).
    """

    vocab_size: int = 0  # 0: taken from the tokenizer
    max_len: int = 256
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 256
    mlp_ratio: float = 4.0
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    position: Literal["rope", "learned"] = "rope"  # learned: absolute embeddings (GPT-2)
    rope_theta: float = 10000.0
    tie_weights: bool = True
    bias: bool = False
    dropout: float = 0.0
    time_conditioning: bool = False  # add an embedding of each position's noise level
    mlp: Literal["gelu", "swiglu"] = "gelu"  # swiglu: down(silu(gate x) * up x) (Llama)
    d_ff: int = 0  # hidden size of the MLP; 0: mlp_ratio * d_model
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0: n_heads
    head_dim: int = 0  # size of one head; 0: d_model // n_heads
    rope_scaling: RopeScaling | None = None  # Llama-3.1/3.2 long-context frequencies
    norm_eps: float | None = None  # None: 1e-6 for rmsnorm, 1e-5 for layernorm
    qk_norm: bool = False  # RMSNorm of each query and key head before RoPE (Qwen3)
    qkv_bias: bool | None = None  # biases of the q, k, v projections; None: as `bias` (Qwen2: true)
    # a local Hugging Face model directory whose config.json sets every field above but max_len,
    # dropout and time_conditioning when training starts (hdlm.model.hf.resolve_architecture)
    from_hf: str | None = None
    # DDiT (SEDD / MDLM / BD3-LM / HDLM codes, `hdlm.model.conditioning`): adaptive LayerNorm
    # from a noise-level embedding in the blocks (and the final layer); it replaces the additive
    # embedding. Without time_conditioning the embedder sees σ = 0 (a constant conditioning).
    adaln: Literal["none", "blocks", "blocks+final"] = "none"
    cond_dim: int = 128  # width of the adaLN conditioning vector
    cond_sigma: str = "loglinear:0.001"  # σ(t) the adaLN embedder (and input_mix_gamma) sees
    input_mix_gamma: float = 0.0  # HDLM-γ input: w E[x_i] + (1 - w) E[MASK], w = e^{-γ σ(t_i)}
    mlp_bias: bool | None = None  # None: as `bias`
    head_bias: bool = False
    # attention kernel for passes with a mask: sdpa (dense mask), flex (FlexAttention with a block
    # mask that skips fully masked tiles; no dropout), auto (flex on CUDA, sdpa elsewhere)
    attention: Literal["auto", "sdpa", "flex"] = "auto"


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "gpt2", "char"] = "bpe"
    vocab_size: int = 4096  # for kind=bpe: trained on the corpus' training split
    path: str | None = None  # an existing tokenizer.json (or a directory holding one)
    # kinds bpe and char learn from the train split's first documents up to this many characters
    train_chars: int = 100_000_000


@dataclass
class SyntheticConfig:
    """A seeded random Markov chain over `n_states` symbols (corpus `synthetic`)."""

    n_states: int = 32
    n_docs: int = 2000
    doc_len: int = 256
    concentration: float = 0.2  # Dirichlet concentration of each transition row
    seed: int = 0


@dataclass
class HmmConfig:
    """A seeded hidden Markov source (corpus `hmm`, `hdlm.data.sources.HiddenMarkov.random`):
    `n_hidden` sticky hidden states (each kept with probability `stay`) emitting `n_symbols`
    symbols from Dirichlet(`concentration`) rows; `n_docs` documents of `doc_len` symbols."""

    n_hidden: int = 8
    n_symbols: int = 32
    stay: float = 0.9
    concentration: float = 0.3
    n_docs: int = 2000
    doc_len: int = 62
    seed: int = 0


@dataclass
class DataConfig:
    corpus: str = "pydocs"  # pydocs | synthetic | hmm | a Hugging Face dataset name | a local path
    seq_len: int = 128  # tokens per training block, BOS included
    text_field: str = "text"  # column holding the text in HF / jsonl data
    hf_subset: str | None = None  # configuration name of a Hugging Face dataset
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    max_documents: int | None = None
    max_tokens: int | None = None  # the store ends with the document that reaches this many
    cache_dir: str = "~/.cache/hdlm"  # tokenizers and token stores (`cache_dir/stores`)
    store: str | None = None  # a token store prepared by `hdlm data prepare` (the corpus' own)
    workers: int = 0  # processes that tokenise a new store; 0: one per core, at most 8
    shard_chars: int = 32 * 2**20  # characters of text per chunk of the store (one shard each)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    hmm: HmmConfig = field(default_factory=HmmConfig)


@dataclass
class DiffusionConfig:
    """Schedule + process + attention + read-out of the hyperschedule families (HDLM).

    `None` fields take the family's preset (`hdlm.families.FAMILIES`; `complete` fills them).
    The schedule spans the L - 1 positions after BOS: quenched_ar | flat:STEPS |
    block:WIDTH:STEPS_PER_BLOCK[:OFFSET] | slide:WIDTH:TAU | file:PATH.
    """

    schedule: str | None = None
    process: Literal["absorbing", "uniform", "eps-hybrid", "gamma-hybrid"] | None = None
    eps: float = 0.01  # ε-hybrid: probability that a visible token is a uniform random one
    gamma: float = 0.01  # γ-hybrid: share of uniform moves in the rate matrix
    sigma: str = "loglinear"  # γ-hybrid total noise σ(t): loglinear[:EPS] | geometric[:MIN:MAX]
    # discrete: a step of the schedule; continuous: a point inside it; count: flat schedules
    # only, the continuous-time NELBO with t integrated out given the number of masked tokens
    time: Literal["discrete", "continuous", "count"] | None = None
    attention: Literal["schedule", "causal", "full", "two-copy"] | None = None
    # output i predicts token i (aligned), or i + 1 (shifted); shifted-copy: masked positions
    # shifted, visible ones aligned (a visible token's own row copies it: ε-hybrid's t = 0+ term)
    readout: Literal["aligned", "shifted", "shifted-copy"] | None = None
    eval_steps: int = 32  # NELBO evaluation: every step if S <= eval_steps, else stratified MC
    # attention=full: train with a causal mask whose future entries open at random, each with
    # probability step / mask_anneal_steps, so an AR parent moves to full attention smoothly
    # (DiffuLLaMA's attention-mask annealing); 0: full attention from the first step
    mask_anneal_steps: int = 0
    # continuous-time ε-hybrid training: share of the rows that estimate the t = 0+ term
    reconstruction_fraction: float = 0.25
    # ε-hybrid training only: HDLM's λ, the weight of its reference code's extra term that
    # trains the output at visible positions at every level (what ACS re-draws from; the NELBO
    # trains it at t = 0+ only). 0: the pure NELBO; the reference code uses 1. Not in the NELBO.
    visible_weight: float = 0.0


@dataclass
class A3Stage:
    """One stage of an A3 curriculum: `steps` training steps with this grouping."""

    steps: int = 100
    grouping: Literal["left-to-right", "random", "spans", "prompt-first", "mixed"] = "left-to-right"
    group_size: int = 1


@dataclass
class A3Config:
    """Any-order, any-subset autoregression (family `a3`; `hdlm.a3` describes the groupings).

    Training uses `grouping` / `group_size`, or the `curriculum` stages in order when given (the
    last one lasts until the end). Evaluation is the exact NLL under `eval_order` in groups of
    `eval_group_size` (random orders are drawn with `eval_seed`).
    """

    grouping: Literal["left-to-right", "random", "spans", "prompt-first", "mixed"] = "random"
    group_size: int = 1
    curriculum: list[A3Stage] = field(default_factory=list)
    mean_span: float = 8.0  # grouping=spans: mean length of a blank span
    eval_order: Literal["left-to-right", "random"] = "left-to-right"
    eval_group_size: int = 1
    eval_seed: int = 0


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    ema: float = 0.0  # EMA decay of the weights; 0 disables
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False
    # recompute each block's activations in the backward pass instead of storing them
    activation_checkpointing: bool = False
    eval_every: int = 200
    eval_batches: int = 16
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 3  # checkpoints kept on disk
    tensorboard: bool = False
    init_from: str | None = None  # start from the weights of this checkpoint
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun; batch_size is the global batch
    on_nonfinite: Literal["stop", "skip"] = "stop"  # NaN/inf loss: stop, or skip the update
    max_nonfinite: int = 10  # on_nonfinite=skip: stop after this many bad steps in a row


@dataclass
class RunConfig:
    name: str = "run"
    family: str = "ar"
    seed: int = 0
    out_dir: str = "runs/{name}"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    a3: A3Config = field(default_factory=A3Config)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir.format(name=self.name))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{path}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value or {}, path)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce(inner, value, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {type(value).__name__} {value!r}")
        (inner,) = typing.get_args(hint)
        return [_coerce(inner, item, f"{path}[{i}]") for i, item in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{path} must be one of {', '.join(map(str, choices))}, got {value!r}"
            )
        return value
    if hint is float and not isinstance(value, bool):
        # YAML reads 3e-4 (no dot) as a string; accept it and ints as floats
        with contextlib.suppress(TypeError, ValueError):
            return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(
            f"{path} must be {hint.__name__}, got {type(value).__name__} {value!r}; "
            f"fix the value in the YAML file or the --set override"
        )
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' must look like key.sub=value (e.g. train.steps=100)"
            )
        dotted, raw = item.split("=", 1)
        node = data
        *parents, leaf = dotted.strip().split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{key}' is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML config as a dict; `base: other.yaml` (relative to the file) is read first and
    this file's keys override it, section by section."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; pass an existing YAML (see configs/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    base = data.pop("base", None)
    return merge(read_yaml(path.parent / base), data) if base else data


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        both_dicts = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if both_dicts else value
    return merged


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or the defaults when `path` is None), apply overrides, complete the
    family's presets and validate."""
    data = read_yaml(Path(path)) if path is not None else {}
    return complete(from_dict(RunConfig, apply_overrides(data, list(overrides))))


def complete(config: RunConfig) -> RunConfig:
    """A validated copy of `config` whose unset `diffusion` keys take the family's preset."""
    config = with_presets(config)
    validate(config)
    return config


def with_presets(config: RunConfig) -> RunConfig:
    """A copy of `config` whose unset `diffusion` keys take the family's preset (no checks:
    for configs validated before, such as a checkpoint's)."""
    preset = family(config.family).diffusion or {}
    unset = {k: v for k, v in preset.items() if getattr(config.diffusion, k) is None}
    return dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, **unset))


def validate(config: RunConfig) -> None:
    """Checks that span several keys; every message names the keys and the fix. The family's
    presets must be in place (`complete`)."""
    m, d, t = config.model, config.data, config.train
    validate_model(m)
    if d.seq_len > m.max_len:
        raise ConfigError(
            f"data.seq_len={d.seq_len} is longer than the model's context "
            f"model.max_len={m.max_len}; lower data.seq_len or raise model.max_len"
        )
    if m.adaln != "none":
        SigmaSchedule.parse(m.cond_sigma)  # raises a ConfigError on a bad spec
    if m.input_mix_gamma and (m.adaln == "none" or not 0 < m.input_mix_gamma < 1):
        raise ConfigError(
            f"model.input_mix_gamma={m.input_mix_gamma} needs model.adaln (its σ schedule) "
            "and must lie in [0, 1)"
        )
    validate_data(d)
    positive = {
        "train.steps": t.steps,
        "train.batch_size": t.batch_size,
        "train.grad_accum": t.grad_accum,
        "model.n_layers": m.n_layers,
        "train.keep_last": t.keep_last,
        "train.max_nonfinite": t.max_nonfinite,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    if not 0 <= t.ema < 1:
        raise ConfigError(f"train.ema={t.ema} must lie in [0, 1) (0 disables EMA)")
    row = family(config.family)
    if row.is_a3:
        validate_a3(config)
    else:
        validate_diffusion(config)


def validate_data(d: DataConfig) -> None:
    """The data section alone (also what `hdlm data prepare` checks)."""
    if d.seq_len < 2:
        raise ConfigError(f"data.seq_len={d.seq_len} must be at least 2 (BOS plus one token)")
    if not 0 <= d.val_fraction < 1 or not 0 <= d.test_fraction <= 1 - d.val_fraction:
        raise ConfigError(
            "data.val_fraction must lie in [0, 1) and data.test_fraction in [0, 1 - "
            "val_fraction] (test_fraction=1: the whole corpus is the test split, for zero-shot "
            "evaluation)"
        )
    at_least = {"data.max_documents": (d.max_documents, 1), "data.max_tokens": (d.max_tokens, 1),
                "data.workers": (d.workers, 0), "data.shard_chars": (d.shard_chars, 1),
                "data.tokenizer.train_chars": (d.tokenizer.train_chars, 1)}  # fmt: skip
    for key, (value, least) in at_least.items():
        if value is not None and value < least:
            raise ConfigError(f"{key}={value} must be at least {least}")


def validate_model(m: ModelConfig) -> None:
    """Checks of the `model` section; every message names the keys and the fix."""
    if m.n_heads < 1 or m.n_kv_heads < 0 or m.head_dim < 0 or m.d_ff < 0:
        raise ConfigError(
            f"model.n_heads={m.n_heads} must be at least 1 and model.n_kv_heads={m.n_kv_heads}, "
            f"model.head_dim={m.head_dim}, model.d_ff={m.d_ff} at least 0 (0: the default)"
        )
    if m.n_kv_heads and m.n_heads % m.n_kv_heads:
        raise ConfigError(
            f"model.n_heads={m.n_heads} must be a multiple of model.n_kv_heads={m.n_kv_heads} "
            "(each key/value head serves the same number of query heads)"
        )
    head_dim = m.head_dim or m.d_model // m.n_heads
    if (not m.head_dim and m.d_model % m.n_heads) or (m.position == "rope" and head_dim % 2):
        raise ConfigError(
            f"model.d_model={m.d_model} must split into model.n_heads={m.n_heads} heads "
            "of even size (RoPE rotates pairs of dimensions), or set an even model.head_dim"
        )
    if m.mlp_ratio <= 0 and not m.d_ff:
        raise ConfigError(f"model.mlp_ratio={m.mlp_ratio} must be positive (or set model.d_ff)")
    if m.norm_eps is not None and not m.norm_eps > 0:
        raise ConfigError(f"model.norm_eps={m.norm_eps} must be positive (or null: the default)")
    if m.rope_theta <= 0:
        raise ConfigError(f"model.rope_theta={m.rope_theta} must be positive")
    if m.attention == "flex" and m.dropout > 0:
        raise ConfigError(f"model.attention=flex has no dropout (model.dropout={m.dropout}); "
                          "set model.dropout=0 or model.attention=sdpa")  # fmt: skip
    r = m.rope_scaling
    if r is None:
        return
    if m.position != "rope":
        raise ConfigError("model.rope_scaling needs model.position=rope; remove it or use rope")
    if not (r.factor >= 1 and 0 < r.low_freq_factor < r.high_freq_factor):
        raise ConfigError(
            f"model.rope_scaling needs factor >= 1 (got {r.factor}) and 0 < low_freq_factor < "
            f"high_freq_factor (got {r.low_freq_factor}, {r.high_freq_factor})"
        )
    if r.original_max_position_embeddings < 1:
        raise ConfigError("model.rope_scaling.original_max_position_embeddings must be >= 1")


def validate_diffusion(config: RunConfig) -> None:
    """Check that the pieces of the `diffusion` section fit together (and, for `ar`, that they
    still describe an AR model)."""
    d = config.diffusion
    if d.schedule is None:
        raise ConfigError(
            f"family {config.family} needs diffusion.schedule (quenched_ar, flat:STEPS, "
            "block:WIDTH:STEPS_PER_BLOCK, slide:WIDTH:TAU or file:PATH)"
        )
    unset = [k for k in ("process", "time", "attention", "readout") if getattr(d, k) is None]
    if unset:
        raise ConfigError(f"diffusion.{unset[0]} is not set; set it or use hdlm.config.complete")
    if config.family == "ar" and (d.attention, d.readout) != ("causal", "shifted"):
        raise ConfigError("family ar reads out shifted under causal attention; drop the "
                          "diffusion.attention / diffusion.readout overrides")  # fmt: skip
    kind = from_spec(d.schedule, config.data.seq_len - 1).kind  # a ConfigError if it is bad
    if d.attention in ("two-copy", "causal") and d.readout == "shifted-copy":
        raise ConfigError(
            f"diffusion.readout=shifted-copy needs full or schedule attention, not {d.attention}; "
            "use readout=shifted"
        )
    if d.attention == "two-copy" and kind != "block":
        raise ConfigError(
            "diffusion.attention=two-copy needs a block:WIDTH:STEPS schedule; "
            "use attention=schedule for other schedules"
        )
    if d.time == "continuous" and d.process == "eps-hybrid" and kind != "flat":
        raise ConfigError(
            "continuous-time eps-hybrid needs a flat schedule (its t=0+ term assumes every "
            "position settles at once); use diffusion.time=discrete with this schedule"
        )
    if d.time == "count" and (
        kind != "flat"
        or d.process not in ("absorbing", "eps-hybrid")
        or config.model.time_conditioning
    ):
        raise ConfigError(
            "diffusion.time=count needs a flat schedule, a masking process (absorbing or "
            "eps-hybrid) and no model.time_conditioning; use diffusion.time=continuous"
        )
    if not 0 <= d.eps < 1:
        raise ConfigError(f"diffusion.eps={d.eps} must lie in [0, 1)")
    if (d.process == "gamma-hybrid") != (config.family == "gamma-hybrid"):
        raise ConfigError(
            "diffusion.process=gamma-hybrid goes with family gamma-hybrid (score entropy); "
            "set both, and diffusion.schedule for a hyperschedule other than flat"
        )
    if not 0 <= d.gamma < 1:
        raise ConfigError(f"diffusion.gamma={d.gamma} must lie in [0, 1)")
    SigmaSchedule.parse(d.sigma)  # raises a ConfigError on a bad spec
    if not 0 < d.reconstruction_fraction < 1:
        raise ConfigError(
            f"diffusion.reconstruction_fraction={d.reconstruction_fraction} must lie in (0, 1)"
        )
    if d.visible_weight < 0 or (d.visible_weight and d.process != "eps-hybrid"):
        raise ConfigError(
            f"diffusion.visible_weight={d.visible_weight} must be >= 0 and trains the "
            f"ε-hybrid's visible positions: it needs diffusion.process=eps-hybrid (got {d.process})"
        )
    if d.eval_steps < 1:
        raise ConfigError(f"diffusion.eval_steps={d.eval_steps} must be at least 1")
    if d.mask_anneal_steps < 0 or (d.mask_anneal_steps and d.attention != "full"):
        raise ConfigError(
            f"diffusion.mask_anneal_steps={d.mask_anneal_steps} must be >= 0, and anneals "
            f"causal to full attention: it needs diffusion.attention=full (got {d.attention})"
        )


def validate_a3(config: RunConfig) -> None:
    """Checks of the `a3` section (family a3)."""
    options = config.a3
    if config.model.time_conditioning:
        raise ConfigError("family a3 does not use model.time_conditioning; set it to false")
    sizes = {"a3.group_size": options.group_size, "a3.eval_group_size": options.eval_group_size}
    for i, stage in enumerate(options.curriculum):
        sizes[f"a3.curriculum[{i}].group_size"] = stage.group_size
        if stage.steps < 1:
            raise ConfigError(f"a3.curriculum[{i}].steps={stage.steps} must be at least 1")
    for key, value in sizes.items():
        if value < 1:
            raise ConfigError(f"{key}={value} must be at least 1")
    if not math.isfinite(options.mean_span) or options.mean_span < 1:
        raise ConfigError(f"a3.mean_span={options.mean_span} must be at least 1")
