"""LIBRA-NAS (L-SWAG paper, Algorithm 1; research/zc_proxies.md §2) over any table of proxy
scores and accuracies.

1. z1 = proxy with the highest Spearman rho vs accuracy;
2. window = proxies h != z1 with rho_best - 0.1 < rho_h <= rho_best; z2 = argmin over the window
   of the information gain IG(h) = H(y | z1) - H(y | z1, h) (the *least* new information);
3. z3 = argmin over the rest of the window of |b_val - b_h|, where a bias b is the Spearman
   correlation with #params (bias matching).
Entropies use histograms with Sturges' rule bins, round(1 + 3.322 ln N) (Suite-Zero's IG, as the
paper borrows it). With fewer than 2 (or 3) candidates in the window LIBRA returns what it has
[the paper is silent]. The selected proxies are merged by rank aggregation: "mean_rank" or the
AZ-NAS-style "log_rank" sum_k log(rank_k / N) (the paper does not say; both are offered).
"""
from __future__ import annotations

import numpy as np
from scipy import stats

WINDOW = 0.1
COMBINE = ("mean_rank", "log_rank")


def sturges_bins(n: int) -> int:
  return int(round(1 + 3.322 * np.log(n)))


def _digitize(v, bins):
  v = np.asarray(v, float)
  edges = np.histogram_bin_edges(v, bins=bins)
  return np.clip(np.digitize(v, edges[1:-1]), 0, bins - 1)


def _entropy(*cols) -> float:
  """Joint entropy (nats) of integer-coded columns."""
  _, counts = np.unique(np.stack(cols, 1), axis=0, return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


def info_gain(y, z1, h, bins=None) -> float:
  """IG(h) = H(y | z1) - H(y | z1, h), with H(y | a, b) = H(y, a, b) - H(a, b)."""
  bins = bins or sturges_bins(len(y))
  yd, ad, hd = (_digitize(v, bins) for v in (y, z1, h))
  return (_entropy(yd, ad) - _entropy(ad)) - (_entropy(yd, ad, hd) - _entropy(ad, hd))


def spearman(a, b) -> float:
  return float(stats.spearmanr(a, b).statistic)


def libra_select(scores: dict[str, np.ndarray], acc: np.ndarray, n_params: np.ndarray,
                 window: float = WINDOW) -> dict:
  """scores: proxy name -> (N,) values (higher = better); acc, n_params: (N,).
  -> {"selected": [z1, z2?, z3?], "rho": {...}, "ig": {...}, "bias": {...}, "b_val": float}."""
  names = [k for k in scores if np.isfinite(scores[k]).all() and np.std(scores[k]) > 0]
  if not names:
    raise ValueError("libra: no proxy with finite, non-constant scores")
  rho = {k: spearman(scores[k], acc) for k in names}
  z1 = max(names, key=lambda k: rho[k])
  cand = [k for k in names if k != z1 and rho[z1] - window < rho[k] <= rho[z1]]
  ig = {k: info_gain(acc, scores[z1], scores[k]) for k in cand}
  selected = [z1]
  if cand:
    z2 = min(cand, key=lambda k: ig[k])
    selected.append(z2)
  b_val = spearman(acc, n_params)
  bias = {k: spearman(scores[k], n_params) for k in names}
  rest = [k for k in cand if k not in selected]
  if rest:
    selected.append(min(rest, key=lambda k: abs(b_val - bias[k])))
  return {"selected": selected, "rho": rho, "ig": ig, "bias": bias, "b_val": b_val,
          "window": cand}


def combine(scores: dict[str, np.ndarray], names, how: str = "log_rank") -> np.ndarray:
  """Merge proxies by ranks (1 = worst .. N = best); higher = better."""
  if how not in COMBINE:
    raise ValueError(f"libra combine must be one of {COMBINE}, got {how!r}")
  n = len(scores[names[0]])
  ranks = [stats.rankdata(scores[k]) for k in names]
  if how == "mean_rank":
    return np.mean(ranks, 0)
  return np.sum([np.log(r / n) for r in ranks], 0)


def evaluate_libra(calib: dict, calib_acc, calib_params, test: dict, test_acc,
                   how: str = "log_rank") -> dict:
  """Select on a calibration split, report rho on a disjoint test split vs the best single proxy
  (chosen on calibration too)."""
  sel = libra_select(calib, calib_acc, calib_params)
  best = sel["selected"][0]
  rho_libra = spearman(combine(test, sel["selected"], how), test_acc)
  rho_best = spearman(test[best], test_acc)
  return {"selected": sel["selected"], "combine": how, "rho_libra_test": rho_libra,
          "best_single": best, "rho_best_single_test": rho_best,
          "beats_best_single": bool(rho_libra > rho_best), "calibration": sel}
