"""python -m experiments.nm --config experiments/configs/nm/nm_digits_conv4.py

2:4 Conv-4 (3x3 convs 32,32,pool,64,64,pool, FC 256-256-10; width halved for 8x8 inputs) on
scikit-learn's 8x8 digits (offline): dense vs one-shot 2:4 vs one-shot + fine-tune (ASP) vs
SR-STE vs STE. Adam 3e-4, batch 60, 2,000 iterations per run. Conv groups run along C_in (the
im2col reduction dimension, channels fastest); the first conv (C_in = 1, not a multiple of 4)
stays dense, as in NVIDIA ASP. Measured (seed 0): dense 97.7%, one-shot 95.3%, fine-tune
97.7%, SR-STE 97.3%, STE 97.3%; should reach: dense ~97-98%, fine-tune and SR-STE within ~1
point of dense. About 8 minutes per training run (4 runs) on 2 shared CPU cores.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.nm(
        "nm_digits_conv4", dataset="digits", **base.model("conv4", width=32), n=2, m=4,
        prunable=(("conv0/", False),),  # C_in = 1: cannot be grouped by 4
        optimizer="adam", learning_rate=3e-4, batch_size=60, num_steps=2000, eval_every=200,
        lambda_w=2e-4, methods=("dense", "one_shot", "one_shot_finetune", "sr_ste", "ste"))
