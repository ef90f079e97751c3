"""python -m experiments.forgetting --config experiments/configs/hooker2019_pie_mnist.py \\
    --data-file /path/to/mnist_subset_6k.npz

The digits recipe (hooker2019_pie_digits) on a 6,000-digit MNIST subset (an .npz with uint8
``images`` [n, 28, 28] and ``labels``): a fixed stratified 5,000 train / 1,000 test split of
the subset (NOT the official MNIST split), LeNet-300-100 (784-300-100-10), Adam 1.2e-3,
batch 60, 5,000 iterations (60 epochs), GMP between iterations 500 and 3,000 every 100,
30 members per level at sparsity 0, 0.3, 0.5, 0.7, 0.9, 0.95 (``--set label_noise=0.1`` for
the noisy-label check). About 5x
the digits run's compute per member; on a GPU each level is one program of 30 members.
Expect: as hooker2019_pie_digits (the paper's claims; docs/forgetting.md has what was
measured).
"""

import os

from experiments import common


def get_config():
    c = common.load_config(os.path.join(os.path.dirname(__file__), "hooker2019_pie_digits.py"))
    c.name = "hooker2019_pie_mnist"
    c.dataset = "mnist"  # the MNIST normalisation constants; the data come from --data-file
    c.test_size = 1000
    c.merge_val = "train"  # 6,000 = 5,000 train + 1,000 test
    c.num_steps = 5000
    c.eval_every = 500
    c.checkpoint_every = 1000
    c.prune_begin = 500
    c.prune_end = 3000
    c.prune_frequency = 100
    c.snapshot_every = 500
    c.score_step = 250
    return c
