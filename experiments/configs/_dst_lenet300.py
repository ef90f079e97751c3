"""Shared body of the dynamic-sparsity recipes on LeNet-300-100 / MNIST (not a recipe itself).

Training: Frankle & Carbin 2019's LeNet-300-100 recipe (REFERENCE.md: Adam 1.2e-3, batch 60,
50K iterations, Glorot-normal, biases not pruned). Pruning schedules, from REFERENCE.md:
SET / RigL as in the RigL code (every dT = 100 iterations, drop fraction d0 = 0.3 annealed by
cosine to 0 at T_end, ERK per-layer densities); GMP (Zhu & Gupta 2017): the cubic schedule
s_t = s_f (1 - (1 - (t - t0) / (n dt))^3) from s_i = 0, every dt iterations, each layer keeping
its top (1 - s_t) by |w| (uniform per layer). NOT given for LeNet by the papers, our choice:
T_end = 75% of training (the RigL paper's ImageNet setting, approximate), GMP from 10% to 60%
of training every 100 iterations (40% of the budget left to recover), 3 replicates.
"""

import ml_collections


def dst_config(name: str, methods: tuple[str, ...]) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = name
    c.dataset = "mnist"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data_file = ml_collections.FieldReference(None, field_type=str)
    c.model = "lenet300"
    c.model_kwargs = ml_collections.ConfigDict({"hidden": (300, 100)})
    c.optimizer = "adam"
    c.learning_rate = 1.2e-3
    c.momentum = 0.0
    c.weight_decay = 0.0
    c.lr_milestones = ()
    c.lr_gamma = 0.1
    c.batch_size = 60
    c.num_steps = 50_000
    c.eval_every = 500
    c.checkpoint_every = 5_000
    c.keep_checkpoints = 2
    c.seed = 0
    c.replicates = 3
    c.methods = methods
    c.sparsities = (0.9, 0.98)  # fraction of the prunable weights pruned
    c.distribution = "erk"  # static / SET / RigL masks at init: erk | uniform
    c.drop_fraction = 0.3  # SET / RigL: d0, fraction of a layer's active weights dropped
    c.drop_schedule = "cosine"  # d(t) from d0 to 0 at update_end: cosine | constant
    c.update_every = 100  # dT
    c.update_end = 0.75  # T_end, fraction of num_steps
    c.gmp_begin = 0.1  # t0, fraction of num_steps
    c.gmp_end = 0.6  # t0 + n dt, fraction of num_steps
    c.gmp_frequency = 100  # dt
    c.gmp_distribution = "uniform"  # per layer, as Zhu & Gupta
    return c
