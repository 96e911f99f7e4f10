"""Importing the papers' released checkpoints: HDLM ε and γ, MDLM, SEDD and BD3-LM.

All five are the same "DDiT" network (SEDD's transformer; docs/reproduce.md), which hdlm's
backbone computes with `model.norm=layernorm`, `bias=false` (weight-only LayerNorm, bias-free
attention), `mlp_bias`, `head_bias`, untied head, and `model.adaln` for the noise conditioning
(`hdlm.model.conditioning`). What differs per format:

| format       | family                 | conditioning (σ = σ(t) of hdlm's level t)              |
|--------------|------------------------|---------------------------------------------------------|
| hdlm-epsilon | eps-hybrid (ε)         | none                                                    |
| hdlm-gamma   | gamma-hybrid (γ)       | adaLN blocks, σ loglinear:5e-3 per position, input mix |
| mdlm         | mdlm                   | adaLN blocks + final; released: σ = 0 (constant)        |
| sedd         | gamma-hybrid, γ = 0    | adaLN blocks + final, σ loglinear:1e-3                  |
| bd3lm        | block-diffusion (w)    | adaLN blocks + final; released: σ = 0 (else -log(1-t))  |

Every read-out is aligned (row i scores token i). The official codes rotate q/k by the
half-split ("rotate_half") convention, hdlm by consecutive pairs; since attention scores are
invariant under a permutation of the channels shared by q and k, the importer permutes the q
and k rows of each head instead (channel k -> 2k, channel k + d/2 -> 2k + 1), which is exact.

The vocabulary is the text tokens plus MASK appended last. With GPT-2's 50257 text tokens the
tokenizer is GPT-2's BPE (built offline, `tokenizer.kind=gpt2`); any other size (the tiny test
fixtures) gets a placeholder tokenizer of that size (`placeholder_tokenizer`).

`hf:OWNER/NAME` names are fetched with `huggingface_hub.snapshot_download` (honours
HF_HUB_OFFLINE and HF_HOME).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models
from torch import Tensor

from hdlm.config import DiffusionConfig, ModelConfig, RunConfig, complete
from hdlm.data.readers import check_hub_reachable
from hdlm.data.tokenizer import EOS, Tokenizer, TokenizerConfig, build_tokenizer
from hdlm.errors import CheckpointError
from hdlm.model.hf_arch import SUPPORTED
from hdlm.model.transformer import Transformer

FORMATS = ("hdlm-epsilon", "hdlm-gamma", "mdlm", "sedd", "bd3lm")
GPT2_TEXT_TOKENS = 50257
HUB_PREFIX = "hf:"
HDLM_SIGMA = "loglinear:0.005"  # HDLM's gamma_hybrid LogLinearNoise default eps
SEDD_SIGMA = "loglinear:0.001"  # SEDD / MDLM LogLinearNoise default eps
BUFFERS = ("rotary_emb.inv_freq", "sampling_eps_min", "sampling_eps_max")  # not parameters


@dataclass
class OfficialModel:
    """What one released format becomes in hdlm: family, network, `diffusion` options."""

    format: str
    family: str
    model: ModelConfig
    text_tokens: int
    length: int  # the context the model was trained on
    prefix: str = ""  # "backbone." for the transformers-style repos
    diffusion: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading files


def read_config(directory: Path) -> dict:
    """config.json, or config.yaml when there is no JSON (HDLM writes both)."""
    for name, parse in (("config.json", json.loads), ("config.yaml", yaml.safe_load)):
        if (directory / name).is_file():
            try:
                data = parse((directory / name).read_text())
            except (ValueError, yaml.YAMLError) as e:
                raise CheckpointError(f"{directory / name} cannot be parsed ({e})") from e
            if not isinstance(data, dict):
                raise CheckpointError(f"{directory / name} does not hold a mapping")
            return data
    raise CheckpointError(f"{directory} has no config.json or config.yaml; pass a model directory")


def read_weights(directory: Path) -> dict[str, Tensor]:
    """model.safetensors, or pytorch_model.bin read with `torch.load(weights_only=True)`."""
    try:
        if (directory / "model.safetensors").is_file():
            return load_file(directory / "model.safetensors")
        if (directory / "pytorch_model.bin").is_file():
            path = directory / "pytorch_model.bin"
            return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # safetensors / pickle errors have no common base class
        raise CheckpointError(f"{directory}: the weights cannot be read ({e})") from e
    raise CheckpointError(f"{directory} has no model.safetensors or pytorch_model.bin")


def detect_format(config: dict) -> str:
    """Which released format a config describes (`FORMATS`), from its fields."""
    kind = config.get("model_type")
    if kind == "epsilon_hybrid":
        return "hdlm-epsilon"
    if kind == "gamma_hybrid":
        return "hdlm-gamma"
    if kind in ("mdlm", "bd3lm"):
        return kind
    if kind is None and "tokens" in config and "graph" in config and "model" in config:
        return "sedd"
    raise CheckpointError(
        f"unknown checkpoint format (model_type {kind!r}); hdlm imports model_type "
        f"{', '.join(SUPPORTED)} and the released {', '.join(FORMATS)} checkpoints"
    )


def _get(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise CheckpointError(f"the model config lacks '{dotted}'; is the download complete?")
        node = node[key]
    return node


# ----------------------------------------------------------------------------- per format


def ddit(vocab: int, d_model: int, heads: int, layers: int, length: int, **options) -> ModelConfig:
    """The DDiT trunk as a `ModelConfig`: weight-only LayerNorm, bias-free attention, MLP and
    head with biases, untied head, RoPE base 10000, MLP ratio 4."""
    return ModelConfig(
        vocab_size=vocab, max_len=length, n_layers=layers, n_heads=heads, d_model=d_model,
        norm="layernorm", position="rope", tie_weights=False, bias=False, mlp_bias=True,
        head_bias=True, **options,
    )  # fmt: skip


def hdlm_model(config: dict, fmt: str) -> OfficialModel:
    """HDLM ε / γ (PyTorchModelHubMixin): V = tokenizer.tokens + 1, un-prefixed keys."""
    m, text = _get(config, "model"), int(_get(config, "tokenizer.tokens"))
    size = (text + 1, int(m["hidden_size"]), int(m["n_heads"]), int(m["n_blocks"]))
    length = int(m["length"])
    if fmt == "hdlm-epsilon":
        eps = float(_get(config, "training.epsilon"))
        net = ddit(*size, length)
        return OfficialModel(fmt, "eps-hybrid", net, text, length, diffusion={"eps": eps})
    gamma = float(_get(config, "graph.gamma"))
    adaln = "blocks" if m.get("transformer_sigma_conditioning", True) else "none"
    mix = gamma if m.get("hybrid_sigma_embedding", False) else 0.0
    net = ddit(*size, length, adaln=adaln, cond_dim=int(m["cond_dim"]), cond_sigma=HDLM_SIGMA,
               time_conditioning=True, input_mix_gamma=mix)  # fmt: skip
    diffusion = {"gamma": gamma, "sigma": HDLM_SIGMA}
    return OfficialModel(fmt, "gamma-hybrid", net, text, length, diffusion=diffusion)


def sedd_model(config: dict) -> OfficialModel:
    """SEDD (absorbing graph only): γ-hybrid with γ = 0 and SEDD's log-linear σ."""
    if _get(config, "graph.type") != "absorb":
        raise CheckpointError(
            f"SEDD with graph.type={config['graph']['type']!r} has no MASK state; hdlm imports "
            "the absorbing ('absorb') SEDD models"
        )
    m, text = config["model"], int(config["tokens"])
    net = ddit(text + 1, int(m["hidden_size"]), int(m["n_heads"]), int(m["n_blocks"]),
               int(m["length"]), adaln="blocks+final", cond_dim=int(m["cond_dim"]),
               cond_sigma=SEDD_SIGMA, time_conditioning=True)  # fmt: skip
    diffusion = {"gamma": 0.0, "sigma": SEDD_SIGMA}
    return OfficialModel("sedd", "gamma-hybrid", net, text, int(m["length"]), "", diffusion)


def kuleshov_model(config: dict, fmt: str) -> OfficialModel:
    """MDLM / BD3-LM (transformers repos, `backbone.` keys): V = vocab_size incl. MASK."""
    fields = ("vocab_size", "hidden_dim", "n_heads", "n_blocks", "model_length", "cond_dim")
    vocab, d_model, heads, layers, length, cond = (int(_get(config, f)) for f in fields)
    timed = bool(config.get("time_conditioning", False))
    adaln = "blocks+final" if config.get("adaln", True) else "none"
    # MDLM feeds σ of its log-linear schedule, BD3-LM σ = -log(1 - t) (when time-conditioned)
    sigma = SEDD_SIGMA if fmt == "mdlm" else "loglinear:0"
    options = {"adaln": adaln, "cond_dim": cond, "cond_sigma": sigma}
    diffusion = {"time": "continuous"} if timed else {}
    if fmt == "mdlm":
        net = ddit(vocab, d_model, heads, layers, length, time_conditioning=timed, **options)
        return OfficialModel(fmt, "mdlm", net, vocab - 1, length, "backbone.", diffusion)
    width = int(_get(config, "block_size"))
    if length % width:
        raise CheckpointError(f"bd3lm: model_length {length} is not a multiple of {width}")
    # the two-copy layout [x_t ; x0] needs two contexts' worth of positions in one pass
    net = ddit(vocab, d_model, heads, layers, 2 * length, time_conditioning=timed, **options)
    # BD3-LM's NELBO is continuous in time within each block (t ~ U(0, 1) per block, weight 1/t)
    # block:w:w:1: BOS shares block 0 with the first w - 1 tokens, as in BD3-LM's layout
    diffusion |= {"schedule": f"block:{width}:{width}:1", "time": "continuous"}
    return OfficialModel(fmt, "block-diffusion", net, vocab - 1, length, "backbone.", diffusion)


def describe(config: dict) -> OfficialModel:
    """The `OfficialModel` of a released config."""
    fmt = detect_format(config)
    try:
        if fmt.startswith("hdlm-"):
            return hdlm_model(config, fmt)
        return sedd_model(config) if fmt == "sedd" else kuleshov_model(config, fmt)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the {fmt} config has a field of the wrong type ({e})") from e


# ----------------------------------------------------------------------------- weights


def half_split_to_pairs(head_dim: int) -> Tensor:
    """Row order that turns half-split rotary channels (k pairs with k + d/2) into consecutive
    pairs (2k, 2k + 1): new channel 2k = old k, new 2k + 1 = old k + d/2."""
    half = head_dim // 2
    return torch.stack((torch.arange(half), torch.arange(half) + half), dim=1).flatten()


def permute_qk(qkv: Tensor, heads: int) -> Tensor:
    """W_qkv [3D, D] (rows: q | k | v, each head-major) with the q and k rows of every head
    reordered by `half_split_to_pairs`; v untouched."""
    d_model = qkv.shape[1]
    order = half_split_to_pairs(d_model // heads)
    rows = qkv.view(3, heads, d_model // heads, d_model).clone()
    rows[:2] = rows[:2, :, order]
    return rows.view(3 * d_model, d_model)


def weight_names(n_layers: int, adaln: str) -> list[tuple[str, str]]:
    """(hdlm name, official name) of every parameter."""
    names = [("embed.weight", "vocab_embed.embedding"),
             ("norm.weight", "output_layer.norm_final.weight"),
             ("head.weight", "output_layer.linear.weight"),
             ("head.bias", "output_layer.linear.bias")]  # fmt: skip
    if adaln != "none":
        names += [(f"cond_embed.mlp.{i}.{k}", f"sigma_map.mlp.{i}.{k}")
                  for i in (0, 2) for k in ("weight", "bias")]  # fmt: skip
    if adaln == "blocks+final":
        names += [(f"final_modulation.linear.{k}", f"output_layer.adaLN_modulation.{k}")
                  for k in ("weight", "bias")]  # fmt: skip
    layer = [("norm1.weight", "norm1.weight"), ("norm2.weight", "norm2.weight"),
             ("attn.qkv.weight", "attn_qkv.weight"),
             ("attn.out.weight", "attn_out.weight")]  # fmt: skip
    layer += [(f"mlp.{i}.{k}", f"mlp.{i}.{k}") for i in (0, 2) for k in ("weight", "bias")]
    if adaln != "none":
        layer += [(f"modulation.linear.{k}", f"adaLN_modulation.{k}") for k in ("weight", "bias")]
    return names + [
        (f"blocks.{i}.{a}", f"blocks.{i}.{b}") for i in range(n_layers) for a, b in layer
    ]


def check_rotary(theirs: dict[str, Tensor], prefix: str, head_dim: int) -> None:
    """The stored inverse frequencies must be base 10000 over the full head dimension."""
    stored = theirs.get(f"{prefix}rotary_emb.inv_freq")
    if stored is None:
        return
    expected = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if stored.shape != expected.shape or not torch.allclose(stored.double(), expected, rtol=1e-5):
        raise CheckpointError("the checkpoint's rotary frequencies are not base 10000 over the "
                              "head dimension; this rotary variant cannot be imported")  # fmt: skip


def convert_weights(theirs: dict[str, Tensor], spec: OfficialModel) -> dict[str, Tensor]:
    """hdlm weights of an official state dict (strict: a missing or unknown key is an error)."""
    m, prefix = spec.model, spec.prefix
    names = weight_names(m.n_layers, m.adaln)
    missing = [prefix + name for _, name in names if prefix + name not in theirs]
    if missing:
        raise CheckpointError(
            f"{spec.format} weights lack {', '.join(missing[:3])}; the weights do not match "
            "the config (or the file is damaged)"
        )
    known = {prefix + name for _, name in names} | {prefix + b for b in BUFFERS} | set(BUFFERS)
    unknown = sorted(set(theirs) - known)
    if unknown:
        raise CheckpointError(
            f"{spec.format} weights hold unexpected tensors ({', '.join(unknown[:3])}); "
            "this variant of the format is not supported"
        )
    check_rotary(theirs, prefix, m.d_model // m.n_heads)
    ours = {a: theirs[prefix + b].float().contiguous() for a, b in names}
    for i in range(m.n_layers):
        key = f"blocks.{i}.attn.qkv.weight"
        ours[key] = permute_qk(ours[key], m.n_heads)
    return ours


# ----------------------------------------------------------------------------- tokenizer


def placeholder_tokenizer(text_tokens: int) -> Tokenizer:
    """A tokenizer with `text_tokens` ids then MASK, for checkpoints not on GPT-2's vocabulary
    (the test fixtures): id i < text_tokens - 1 is one character (printable ASCII from '!', then
    private-use code points), the last text id is EOS (= BOS), as in GPT-2."""
    chars = [chr(0x21 + i) if i < 94 else chr(0xE000 + i) for i in range(text_tokens - 1)]
    hf = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[]))
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens([EOS])
    return Tokenizer(hf)


def official_tokenizer(text_tokens: int) -> Tokenizer:
    """GPT-2's BPE + MASK (id 50257) for GPT-2-sized vocabularies, else `placeholder_tokenizer`."""
    if text_tokens == GPT2_TEXT_TOKENS:
        return build_tokenizer(TokenizerConfig(kind="gpt2"))
    return placeholder_tokenizer(text_tokens)


# ----------------------------------------------------------------------------- import


def is_official(directory: Path) -> bool:
    """Whether `directory` looks like a released checkpoint (not hdlm's, not a transformers model
    `hdlm.model.hf` imports): a model config without an hdlm checkpoint's manifest or a run
    directory's `latest` file."""
    if (directory / "manifest.json").is_file() or (directory / "latest").is_file():
        return False
    if not (directory / "config.json").is_file() and not (directory / "config.yaml").is_file():
        return False
    try:
        config = read_config(directory)
    except CheckpointError:
        return True  # unreadable: importing it says why
    return config.get("format") != "hdlm" and config.get("model_type") not in ("hdlm", *SUPPORTED)


def import_official(path: str | Path) -> tuple[RunConfig, dict[str, Tensor], Tokenizer]:
    """(run config, hdlm weights, tokenizer) of a released checkpoint directory or `hf:` name."""
    directory = resolve_source(path)
    spec = describe(read_config(directory))
    weights = convert_weights(read_weights(directory), spec)
    tokenizer = official_tokenizer(spec.text_tokens)
    if tokenizer.vocab_size != spec.model.vocab_size or tokenizer.mask_id != spec.text_tokens:
        raise CheckpointError(
            f"{directory}: the model has {spec.model.vocab_size} ids but its tokenizer "
            f"{tokenizer.vocab_size}; the config does not describe these weights"
        )
    config = RunConfig(name=directory.name, family=spec.family, model=spec.model)
    config.diffusion = replace(DiffusionConfig(), **spec.diffusion)
    config.data.seq_len = spec.length
    config.data.tokenizer.kind = "gpt2" if spec.text_tokens == GPT2_TEXT_TOKENS else "char"
    config = complete(config)
    check_weights(weights, config.model, directory)
    return config, weights, tokenizer


def check_weights(weights: dict[str, Tensor], model: ModelConfig, directory: Path) -> None:
    """Every weight has the shape the network of `model` expects and is finite."""
    with torch.device("meta"):  # shapes only, no memory
        expected = Transformer(model).state_dict()
    for key, value in weights.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{directory}: weight {key} has shape {tuple(value.shape)}, the config implies "
                f"{tuple(expected[key].shape)}; the config does not describe these weights"
            )
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{directory}: weight {key} holds NaN or inf; re-download it")


def official_log_score(
    logits: Tensor, sigma: Tensor, x_t: Tensor | None = None, scatter: bool = False
) -> Tensor:
    """The score read-out of SEDD / HDLM-γ (`scale_by_sigma`): logits - log(e^σ - 1) -
    log(V - 1) at every column (V counts MASK), σ [B] or [B, L]; SEDD (`scatter`) then sets
    the input token's column to 0."""
    sigma = sigma.view(*sigma.shape, *[1] * (logits.dim() - sigma.dim()))
    out = logits - torch.log(torch.expm1(sigma.double())).float() - math.log(logits.shape[-1] - 1)
    return out.scatter(-1, x_t[..., None], 0.0) if scatter else out


# ----------------------------------------------------------------------------- the hub


def resolve_source(path: str | Path) -> Path:
    """A local directory for `path`: itself, or the hub snapshot of an `hf:OWNER/NAME` name."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        return hub_snapshot(text[len(HUB_PREFIX) :])
    directory = Path(text).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a directory; pass a model directory or hf:NAME")
    return directory


def hub_snapshot(repo_id: str) -> Path:
    """`huggingface_hub.snapshot_download(repo_id)`: the cached copy under HF_HOME, downloaded
    unless HF_HUB_OFFLINE=1. Any failure is one line naming the repository and the fix."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise CheckpointError(f"'{HUB_PREFIX}{repo_id}' is not a hub name; use hf:OWNER/NAME")
    try:
        from huggingface_hub import constants, snapshot_download  # only for hf: names
    except ModuleNotFoundError as e:
        raise CheckpointError(f"hf: names need huggingface_hub ({e}); pip install it") from e
    patterns = ["*.json", "*.yaml", "*.safetensors", "pytorch_model.bin", "tokenizer*"]
    check_hub_reachable(f"{HUB_PREFIX}{repo_id}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as e:  # network, HTTP and cache-miss errors have no common base class
        offline = (
            "HF_HUB_OFFLINE=1 is set and it is not in the cache"
            if constants.HF_HUB_OFFLINE
            else "no network?"
        )
        raise CheckpointError(
            f"cannot fetch {HUB_PREFIX}{repo_id} ({offline}; {type(e).__name__}); download it "
            f"where the hub is reachable into the cache {constants.HF_HUB_CACHE} (HF_HOME), "
            "then run with HF_HUB_OFFLINE=1"
        ) from e
