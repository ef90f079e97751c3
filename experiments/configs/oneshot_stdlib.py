"""python -m experiments.oneshot --config experiments/configs/oneshot_stdlib.py

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


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "oneshot_stdlib"
    c.seed = 0
    # model: jaxsparse.models.transformer.gpt
    c.d_model = 128
    c.num_layers = 4
    c.num_heads = 4
    c.d_ff = 512
    c.seq_len = 128
    # training (the one trainer, next-byte cross-entropy)
    c.train_windows = 40_000  # spread evenly over the training split
    c.num_steps = 800
    c.batch_size = 32
    c.learning_rate = 3e-3
    c.warmup_steps = 50
    c.weight_decay = 0.01
    c.eval_every = 100
    # evaluation: the first val_windows non-overlapping windows of the validation split
    c.val_windows = 512
    # calibration (the papers: 128 sequences of 2048 tokens)
    c.calib_sequences = 128
    c.calib_batch = 16
    # pruning
    c.methods = ("magnitude", "wanda", "sparsegpt")
    c.settings = ("0.5", "2:4", "4:8")  # unstructured sparsity, or n:m
    c.blocksize = 128
    c.percdamp = 0.01
    c.owl_sparsity = 0.7
    c.owl_m = 5.0
    c.owl_lam = 0.08
    c.owl_methods = ("wanda", "sparsegpt")
    c.sweep = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    return c
