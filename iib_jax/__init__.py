"""iib-jax: IIBalance and the balancing methods it is measured against, in JAX/Flax.

`import iib_jax` pulls in jax, flax and optax only; the data pipeline (`iib_jax.data`, which needs
TensorFlow) is imported explicitly where it is used.
"""
from iib_jax import budget, fusion, losses, prototypes
from iib_jax.budget import (alignment_strength, anchor_index, information_budget,
                            normalized_entropy, relative_budget)
from iib_jax.fusion import fuse, fusion_weights
from iib_jax.methods import Method, MethodSpec, get_method
from iib_jax.models import build_model
from iib_jax.prototypes import PrototypeBank, ema_update, init_bank, pra_loss
from iib_jax.state import TrainState, create_train_state
from iib_jax.train import make_eval_step, make_optimizer, make_train_step

__version__ = "0.1.0"
