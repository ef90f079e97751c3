"""python -m experiments.forgetting --config experiments/configs/forgetting/hooker2019_pie_digits.py

Hooker et al. 2019's Pruning Identified Exemplars protocol at the scale of the offline digits
(scikit-learn's 1,797 real 8x8 images: 1,197 train; jaxsparse.data.digits()'s val and test
merged into 600 held-out test examples, since nothing here early-stops): 30 LeNet-300-100
members per level at sparsity 0, 0.1, 0.3, 0.5, 0.7, 0.9 and 0.95, each level ONE population
program, trained with gradual magnitude pruning (Zhu & Gupta's cubic schedule, every layer
pruned to the level's sparsity between iterations 150 and 900, every 50), Adam 1.2e-3,
batch 60, 1,500 iterations (~75 epochs). ``--set label_noise=0.1`` replaces 10% of the
training labels by a random other class (a fixed, recorded subset) to check whether PIEs
over-index on noisy examples.
From the paper: the population size, the levels (0.95 added), GMP during training, the modal
label rule (ties: "prob", see jaxsparse.forgetting.modal; the original's is "largest"),
Welch's t-test per class (plus Benjamini-Hochberg, which the paper does not apply). Not from
the paper: the model, data and optimiser (ResNet-50 / ImageNet there), the dense-vs-dense
null, the label noise.

Expect (the paper, ImageNet): the PIE share grows with sparsity and pruned models lose much
more accuracy on PIEs than elsewhere. Measured here (seed 0, docs/forgetting.md): top-1 98.1%
dense, 97.5% at 0.95; PIE share (15 vs 15 members) 0.22% at 0.1, 0.20% at 0.3 rising to 0.44%
at 0.95 over a dense-vs-dense null of 0.05%, excess +0.39% [0.00, +0.67] at 0.95 (1-3 test
images of 600: digits is too easy to show it with confidence). With label_noise=0.1 the
excess at 0.95 is +4.1% [+3.2, +5.0] and 96% of the training-set PIEs are noisy labels
(6-level run). 1m49s on 2 quiet CPU cores at 30 members and 7 levels (~10 minutes when they
are busy); --set members=10 for a quicker check.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.forgetting(
        "hooker2019_pie_digits", dataset="digits", merge_val="test",
        **base.model("lenet300", hidden=(300, 100)), optimizer="adam", learning_rate=1.2e-3,
        batch_size=60, num_steps=1500, eval_every=250, checkpoint_every=500, members=30,
        sparsities=(0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95), prune_begin=150, prune_end=900,
        prune_frequency=50, snapshot_every=150, score_step=60)
