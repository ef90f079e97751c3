"""python -m experiments.nm --config experiments/configs/nm_digits_conv4.py

2:4 Conv-4 (3x3 convs 32,32,pool,64,64,pool, FC 256-256-10; width halved for 8x8 inputs) on
scikit-learn's 8x8 digits (offline): dense vs one-shot 2:4 vs one-shot + fine-tune (ASP) vs
SR-STE vs STE. Adam 3e-4, batch 60, 2,000 iterations per run. Conv groups run along C_in (the
im2col reduction dimension, channels fastest); the first conv (C_in = 1, not a multiple of 4)
stays dense, as in NVIDIA ASP. Measured (seed 0): dense 97.7%, one-shot 95.3%, fine-tune
97.7%, SR-STE 97.3%, STE 97.3%; should reach: dense ~97-98%, fine-tune and SR-STE within ~1
point of dense. About 8 minutes per training run (4 runs) on 2 shared CPU cores.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "nm_digits_conv4"
    c.dataset = "digits"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.val_size = ml_collections.FieldReference(None, field_type=int)
    c.model = "conv4"
    c.model_kwargs = ml_collections.ConfigDict({"width": 32})
    c.optimizer = "adam"
    c.learning_rate = 3e-4
    c.momentum = 0.0
    c.weight_decay = 0.0
    c.lr_milestones = ()
    c.lr_gamma = 0.1
    c.batch_size = 60
    c.num_steps = 2000
    c.eval_every = 200
    c.augment = False
    c.seed = 0
    c.n = 2
    c.m = 4
    c.lambda_w = 2e-4
    c.prunable = (("conv0/", False),)  # C_in = 1: cannot be grouped by 4
    c.methods = ("dense", "one_shot", "one_shot_finetune", "sr_ste", "ste")
    return c
