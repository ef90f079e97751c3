"""Test configuration: strict JAX, warnings as errors (pyproject), 4 faked CPU devices."""

import os

# Multi-device behaviour is tested on CPU with faked devices. Must be set before jax loads.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
