"""python -m experiments.forgetting \\
    --config experiments/configs/forgetting/hooker2019_pie_mnist.py \\
    --data-file /path/to/mnist_subset_6k.npz

Hooker et al. 2019's PIE protocol (as forgetting/hooker2019_pie_digits.py) on a 6,000-digit
MNIST subset (an .npz with uint8 ``images`` [n, 28, 28] and ``labels``): a fixed stratified
5,000 train / 1,000 test split of the subset (NOT the official MNIST split), LeNet-300-100
(784-300-100-10), Adam 1.2e-3, batch 60, 5,000 iterations (60 epochs), GMP between
iterations 500 and 3,000 every 100, 30 members per level at sparsity 0, 0.1, 0.3, 0.5, 0.7,
0.9, 0.95 (``--set label_noise=0.1`` for the noisy-label check). About 5x the digits run's
compute per member; on a GPU each level is one program of 30 members. Expect: the paper's
claims, as for the digits run (docs/forgetting.md has what was measured).
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    # dataset "mnist": the MNIST normalisation constants; the data come from --data-file.
    return base.forgetting(
        "hooker2019_pie_mnist", dataset="mnist", test_size=1000,
        merge_val="train",  # 6,000 = 5,000 train + 1,000 test
        members=30, sparsities=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95),
        **base.model("lenet300", hidden=(300, 100)), optimizer="adam", learning_rate=1.2e-3,
        batch_size=60, num_steps=5000, eval_every=500, checkpoint_every=1000,
        snapshot_every=500, score_step=250, prune_begin=500, prune_end=3000,
        prune_frequency=100)
