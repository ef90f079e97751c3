"""python -m experiments.nm --config experiments/configs/nm/nm_digits_lenet.py

2:4 LeNet-300-100 (64-300-100-10) on scikit-learn's 8x8 digits (offline; 1,197 / 300 / 300):
dense vs one-shot 2:4 vs one-shot + fine-tune (NVIDIA ASP) vs SR-STE (Zhou et al. 2021,
lambda_w = 2e-4) vs plain STE. Adam 1.2e-3, batch 60, 2,000 iterations per training run;
groups of 4 run along each kernel's input axis (the hardware's reduction dimension), all three
kernels are 2:4 (K = 64, 300, 100). Should reach: dense ~97%; one-shot loses a little; fine-tune
and SR-STE recover to within ~1 point of dense (measured, seed 0: dense 98.3%, one-shot
97.0%, fine-tune 98.3%, SR-STE 98.0%, STE 98.3%). About 1 minute on 2 CPU cores.
"""

import ml_collections

from experiments.configs import base


def get_config() -> ml_collections.ConfigDict:
    return base.nm("nm_digits_lenet", n=2, m=4, lambda_w=2e-4, dataset="digits",
                   **base.model("lenet300", hidden=(300, 100)), optimizer="adam",
                   learning_rate=1.2e-3, batch_size=60, num_steps=2000, eval_every=100,
                   methods=("dense", "one_shot", "one_shot_finetune", "sr_ste", "ste"))
