"""evonas_jax: hardware-aware NAS of hybrid VSS/ViT vision models in JAX/Flax."""
__version__ = "0.1.0"
