"""Expected GPU memory and training throughput of the pretrained-model configs (computed, not
measured: no GPU was available when they were written; `hdlm bench --device cuda` measures).

For each config the backbone is built on the meta device from the public config.json values of
its parent (so the parameter count N is exact) and:

* memory per GPU (DDP; FSDP divides the first term by the number of GPUs) =
  16 N bytes (fp32 weights and gradients, AdamW's two moments)
  + rows x layers x (10 d_model + 8 d_ff) x 2 bytes (bf16 activations kept for the backward
    pass, SDPA without stored scores) + scored rows x vocab x B bytes for the logits
    (B = 14 when the family materialises float32 log-probabilities (a3), else 6: hdlm's fused
    cross-entropy keeps bf16 logits and their gradient, chunk by chunk in float32);
* tokens/s per GPU = MFU x peak / (6 N' k + 12 layers d_model L k), N' = N without the
  embedding table (the tied head's matmul counted once), k = rows processed per token (2 for
  a3: content and query streams), at MFU 40% of an H100 SXM's 989 TFLOP/s (bf16 dense).

    PYTHONPATH=src python3 scripts/estimate-gpu.py
"""

from __future__ import annotations

import torch

from hdlm.model.hf_arch import llama_model_config
from hdlm.model.transformer import Transformer

PEAK, MFU = 989e12, 0.40
PARENTS = {
    "Llama-3.2-1B": {"model_type": "llama", "vocab_size": 128256, "hidden_size": 2048,
                     "intermediate_size": 8192, "num_hidden_layers": 16,
                     "num_attention_heads": 32, "num_key_value_heads": 8,
                     "tie_word_embeddings": True, "rms_norm_eps": 1e-5},
    "Qwen3-0.6B": {"model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024,
                   "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
}  # fmt: skip
# config -> (parent, family, sequences per GPU per micro-step, sequence length)
CONFIGS = {
    "a3-llama-3.2-1b.yaml": ("Llama-3.2-1B", "a3", 4, 1024),
    "a3-qwen3-0.6b.yaml": ("Qwen3-0.6B", "a3", 8, 1024),
    "mdlm-qwen3-0.6b.yaml": ("Qwen3-0.6B", "mdlm", 16, 1024),
}


def estimate(parent: str, family: str, batch: int, length: int) -> dict:
    m = llama_model_config(PARENTS[parent], parent)
    with torch.device("meta"):
        net = Transformer(m)
    params = net.num_params()
    body = net.num_params(embeddings=False)
    k = 2 if family == "a3" else 1
    rows, scored = batch * length * k, batch * (length - 1)
    activations = rows * m.n_layers * (10 * m.d_model + 8 * m.d_ff) * 2
    logits = scored * m.vocab_size * (14 if family == "a3" else 6)
    flops = 6 * (body + m.d_model * m.vocab_size) * k + 12 * m.n_layers * m.d_model * length * k
    return {"params": params, "states_gib": 16 * params / 2**30,
            "activations_gib": (activations + logits) / 2**30,
            "tokens_per_s": MFU * PEAK / flops}  # fmt: skip


def main() -> None:
    print("| config | parent | params | weights+grads+AdamW | activations | tokens/s/GPU |")
    print("|---|---|---|---|---|---|")
    for name, (parent, family, batch, length) in CONFIGS.items():
        e = estimate(parent, family, batch, length)
        print(f"| {name} ({batch} x {length}/GPU) | {parent} | {e['params'] / 1e9:.2f}B | "
              f"{e['states_gib']:.1f} GiB | {e['activations_gib']:.1f} GiB | "
              f"{e['tokens_per_s']:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
