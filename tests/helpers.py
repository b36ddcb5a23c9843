"""Shared test helpers: load a configs/*.py file; point a config at the digits dataset."""
import importlib.util
import os

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_config(name: str):
  """get_config() of configs/<name>.py."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def use_digits(c, tmp_path, image_size: int = 16):
  """scikit-learn's bundled digits (always offline), prepared under tmp_path; returns c."""
  c.data.source = "digits"
  c.data.tfds_data_dir = str(tmp_path / "tfds")
  c.data.val_size = 200
  c.data.image_size = image_size
  c.data.mean, c.data.std = 0.3, 0.35
  return c
