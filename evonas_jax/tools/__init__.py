"""Standalone scripts shipped with the package (copied into bundles; run without evonas_jax)."""
