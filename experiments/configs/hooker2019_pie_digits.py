"""python -m experiments.forgetting --config experiments/configs/hooker2019_pie_digits.py

Hooker et al. 2019's Pruning Identified Exemplars protocol at the scale of the offline digits
(scikit-learn's 1,797 real 8x8 images: 1,197 train; jaxsparse.data.digits()'s val and test
merged into 600 held-out test examples, since nothing here early-stops): 30 LeNet-300-100
members per level at sparsity 0, 0.3, 0.5, 0.7, 0.9 and 0.95, each level ONE population
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
dense, 97.5% at 0.95; PIE share (15 vs 15 members) 0.19% at 0.3 rising to 0.43% at 0.95 over a
dense-vs-dense null of 0.05%, excess +0.38% [0.00, +0.67] at 0.95 (1-3 test images of 600:
digits is too easy to show it with confidence). With label_noise=0.1 the excess at 0.95 is
+4.1% [+3.2, +5.0] and 96% of the training-set PIEs are noisy labels. ~8.5 minutes on 2 busy
CPU cores at 30 members; --set members=10 for a quicker check.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "hooker2019_pie_digits"
    c.dataset = "digits"
    c.data_file = ml_collections.FieldReference(None, field_type=str)
    c.test_size = 1000  # data_file only: stratified held-out examples
    c.merge_val = "test"  # nothing early-stops: the val split joins "test" (or "train")
    c.model = "lenet300"
    c.model_kwargs = ml_collections.ConfigDict({"hidden": (300, 100)})
    c.optimizer = "adam"
    c.learning_rate = 1.2e-3
    c.batch_size = 60
    c.num_steps = 1500
    c.eval_every = 250
    c.checkpoint_every = 500
    c.members = 30
    c.sparsities = (0.0, 0.3, 0.5, 0.7, 0.9, 0.95)
    # gradual magnitude pruning (jaxsparse.pruners.gmp)
    c.prune_begin = 150
    c.prune_end = 900
    c.prune_frequency = 50
    c.prune_allocation = "uniform"  # every layer to the level's sparsity (Zhu & Gupta)
    # label noise on a fixed subset of the training set (off: the paper has none)
    c.label_noise = 0.0
    # checkpoints for VoG (every snapshot_every iterations, step 0 excluded) and the early
    # snapshot for EL2N / GraNd (Paul et al.: a few epochs in)
    c.snapshot_every = 150
    c.score_step = 60
    c.vog_target = "logit"
    # analyses
    c.tie = "prob"
    c.null_draws = 1000
    c.ci = 0.95
    c.alpha = 0.05
    c.cie_fraction = 0.1
    c.int8 = True  # the dense population fake-quantised to int8 as a compression variant
    c.record_values = "logits"  # or "probs", "none"
    c.record_layout = "list"  # or "columns"
    c.seed = 0
    return c
