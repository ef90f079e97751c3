"""python -m experiments.sweep --config experiments/configs/sweep/sweep_digits.py

A grid of learning rate x sparsity (random layerwise pruning at init, fraction pruned) x seed
on scikit-learn's 8x8 digits with LeNet-300-100 (64-300-100-10, Adam, batch 60): 27 members
trained as ONE population by the one trainer (one compile), sharded over every device,
checkpointed every ``eval_every`` steps. Should finish in about a minute on 2 CPU cores;
expect ~95-98% test accuracy for lr 1.2e-3 at sparsity 0 and 0.5, a little lower at 0.9, and
a sample std over seeds below ~1 point. Split it over SLURM array jobs with
``--task-index/--num-tasks`` (see docs/sweeps.md).
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.sweep("sweep_digits", dataset="digits", model="lenet300", hidden=(300, 100),
                      learning_rate=[3e-4, 1.2e-3, 5e-3], sparsity=[0.0, 0.5, 0.9],
                      seed=[0, 1, 2], batch_size=60, num_steps=600, eval_every=200)
