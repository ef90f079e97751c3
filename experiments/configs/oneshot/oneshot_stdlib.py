"""python -m experiments.oneshot --config experiments/configs/oneshot/oneshot_stdlib.py

One-shot pruning of a small byte-level GPT trained on the Python standard library's own
source files (offline; split by file, every 10th file is validation). The model (4 pre-LN
blocks, d_model 128, 4 heads, MLP 512, context 128; 0.88M parameters, 0.79M in the block
kernels) trains with the one trainer (AdamW 3e-3, warmup 50, cosine, batch 32, 800
iterations) and should reach a validation perplexity of about 5.9 per byte (measured on
Python 3.11.7, seed 0: 5.877; 852 s on 2 CPU cores shared with other jobs, a few minutes on
idle ones). Then every kernel inside the blocks (q, k, v, out, fc1, fc2) is pruned with 128
calibration windows of 128 bytes from the training split, sequentially block by block:
magnitude, Wanda and SparseGPT at 50% unstructured, 2:4 and 4:8, and OWL (M = 5,
lambda = 0.08) with Wanda and with SparseGPT at 70%, plus a sparsity sweep of the three
methods for the plot. Measured (validation perplexity): 50% magnitude 6.42, Wanda 6.44,
SparseGPT 6.06; 2:4 7.51 / 7.60 / 6.30; 4:8 7.03 / 7.10 / 6.16; OWL + Wanda at 70% 12.67
(uniform Wanda 10.25). The papers' SparseGPT ~ Wanda < magnitude needs LLM outlier features
that this model lacks (see docs/oneshot.md).
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.oneshot(
        "oneshot_stdlib",
        # model: jaxsparse.models.transformer.gpt
        d_model=128, num_layers=4, num_heads=4, d_ff=512, seq_len=128,
        # training (the one trainer, next-byte cross-entropy); windows spread evenly over the
        # training split
        train_windows=40_000, num_steps=800, batch_size=32, learning_rate=3e-3,
        warmup_steps=50, weight_decay=0.01, eval_every=100,
        # evaluation: the first val_windows non-overlapping windows of the validation split
        val_windows=512,
        # calibration (the papers: 128 sequences of 2048 tokens)
        calib_sequences=128, calib_batch=16,
        # pruning: SparseGPT's block size and dampening, OWL's M and lambda (the papers')
        methods=("magnitude", "wanda", "sparsegpt"), settings=("0.5", "2:4", "4:8"),
        blocksize=128, percdamp=0.01, owl_sparsity=0.7, owl_m=5.0, owl_lam=0.08,
        owl_methods=("wanda", "sparsegpt"), sweep=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8))
