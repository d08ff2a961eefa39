"""iib-jax: IIBalance and the balancing methods it is measured against, in JAX/Flax."""
