"""python -m experiments.train --config experiments/configs/lenet300_digits.py

Dense LeNet-300-100 on scikit-learn's 8x8 digits (offline; 1,197 / 300 / 300 split), Adam
1.2e-3, batch 60, 2,000 iterations (~100 epochs), evaluated every 100 iterations. Should
reach >= 95% test accuracy (typically ~97-98%) in well under a minute on 2 CPU cores.

The same recipe on real MNIST (Frankle & Carbin 2019's LeNet-300-100 setting, 55k/5k/10k):

    python -m experiments.train --config experiments/configs/lenet300_digits.py \\
        --dataset mnist --data-dir DIR --set num_steps=50000

(DIR holds the four IDX files or a prepared tfds directory; expect ~98% test accuracy.)
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "lenet300_digits"
    c.dataset = "digits"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.val_size = ml_collections.FieldReference(None, field_type=int)  # None: the paper split
    c.model = "lenet300"
    c.model_kwargs = ml_collections.ConfigDict({"hidden": (300, 100)})
    c.optimizer = "adam"
    c.learning_rate = 1.2e-3
    c.momentum = 0.0
    c.weight_decay = 0.0
    c.lr_milestones = ()
    c.lr_gamma = 0.1
    c.batch_size = 60
    c.num_steps = 2000
    c.eval_every = 100
    c.checkpoint_every = 500
    c.keep_checkpoints = 2
    c.seed = 0
    c.augment = False
    c.random_sparsity = 0.0  # fraction pruned at init (layerwise, random); 0 = dense
    return c
