"""Shared defaults of the supermask recipes (see experiments/supermask.py for the keys)."""

import ml_collections


def base(name: str, method: str, **overrides) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = name
    c.method = method  # learned | edge_popup | at_init
    c.dataset = "digits"
    c.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data_file = ml_collections.FieldReference(None, field_type=str)
    c.model = "lenet300"
    c.model_kwargs = ml_collections.ConfigDict({})
    c.seed = 0
    # Supermask (learned / edge_popup).
    c.weights = "init"  # init | signed_constant | signed_kaiming_constant | kaiming_normal
    c.score_init = "uniform"  # uniform | kaiming_uniform | constant
    c.score_scale = 1.0
    c.rescale = False  # Zhou et al.'s dynamic weight rescaling by total / kept
    c.density = 0.5  # edge_popup: fraction of each layer's weights KEPT (the paper's k)
    c.train_other = False  # also train biases / norm params (papers: no)
    # Optimisation (of the scores; of the dense net for at_init).
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 0.0
    c.schedule = "constant"  # constant | cosine
    c.batch_size = 128
    c.num_steps = 1000
    c.eval_every = 100
    # at_init sweep.
    c.criteria = ("large_final_same_sign", "large_final", "magnitude_increase", "random")
    c.densities = (0.05, 0.1, 0.2, 0.3, 0.5)
    c.signed_constant = (False, True)
    c.scope = "layerwise"
    for k, v in overrides.items():
        setattr(c, k, v)
    return c
