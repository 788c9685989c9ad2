"""Numbers for penultimate-layer embeddings.

The OLS paper only shows t-SNE pictures of the embeddings; here their class
structure is also quantified: silhouette score, leave-one-out k-NN accuracy
and the ratio of intra-class spread to the distance between class centroids.

References:
  Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021, Fig. 6.
  Rousseeuw, "Silhouettes", J. Comput. Appl. Math. 20 (1987).
  van der Maaten and Hinton, "Visualizing Data using t-SNE", JMLR 2008.
"""

from __future__ import annotations

import numpy as np


def subsample_indices(n: int, max_samples: int, seed: int = 0) -> np.ndarray:
  """Sorted indices of a deterministic random subset of ``range(n)``.

  Args:
    n: number of samples.
    max_samples: size of the subset (all indices when ``n <= max_samples``).
    seed: seed of the NumPy generator.

  Returns:
    int64 indices in increasing order.
  """
  if n <= max_samples:
    return np.arange(n, dtype=np.int64)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(n, size=max_samples, replace=False)).astype(np.int64)


def _check(emb, labels):
  emb = np.asarray(emb, np.float64)
  labels = np.asarray(labels)
  if emb.ndim != 2 or labels.shape != emb.shape[:1]:
    raise ValueError(f"expected emb (N, D) and labels (N,), got {emb.shape} "
                     f"and {labels.shape}")
  return emb, labels


def _pairwise_sq_dists(x: np.ndarray) -> np.ndarray:
  sq = np.sum(x * x, axis=1)
  d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
  return np.maximum(d, 0.0)


def knn_accuracy(emb: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
  """Leave-one-out k-NN accuracy with Euclidean distance.

  Each sample is classified by a majority vote of its ``k`` nearest other
  samples; a tie goes to the tied class with the nearest neighbour.

  Args:
    emb: ``(N, D)`` embeddings.
    labels: ``(N,)`` labels.
    k: number of neighbours (at most ``N - 1`` are used).

  Returns:
    The fraction of samples whose vote equals their label; NaN if ``N < 2``.
  """
  emb, labels = _check(emb, labels)
  n = emb.shape[0]
  if n < 2:
    return float("nan")
  k = max(1, min(int(k), n - 1))
  _, y = np.unique(labels, return_inverse=True)
  y = y.reshape(-1)
  num_classes = int(y.max()) + 1
  d = _pairwise_sq_dists(emb)
  np.fill_diagonal(d, np.inf)
  near = np.argpartition(d, k - 1, axis=1)[:, :k]
  rows = np.arange(n)[:, None]
  # Sort the k neighbours by distance (index breaks ties deterministically).
  order = np.lexsort((near, d[rows, near]), axis=1)
  near = near[rows, order]
  near_labels = y[near]  # (n, k)
  votes = np.zeros((n, num_classes), np.int64)
  np.add.at(votes, (np.repeat(np.arange(n), k), near_labels.reshape(-1)), 1)
  best = votes.max(axis=1)
  is_top = votes[rows, near_labels] == best[:, None]  # (n, k)
  first = np.argmax(is_top, axis=1)
  pred = near_labels[np.arange(n), first]
  return float(np.mean(pred == y))


def intra_inter_ratio(emb: np.ndarray, labels: np.ndarray) -> float:
  """Mean distance to the own class centroid over mean centroid distance.

  Args:
    emb: ``(N, D)`` embeddings.
    labels: ``(N,)`` labels.

  Returns:
    ``mean_i ||x_i - mu_{y_i}|| / mean_{c < c'} ||mu_c - mu_c'||`` (lower =
    tighter, better separated classes); NaN with fewer than two classes.
  """
  emb, labels = _check(emb, labels)
  classes, y = np.unique(labels, return_inverse=True)
  y = y.reshape(-1)
  if classes.size < 2:
    return float("nan")
  counts = np.bincount(y, minlength=classes.size).astype(np.float64)
  centroids = np.zeros((classes.size, emb.shape[1]))
  np.add.at(centroids, y, emb)
  centroids /= counts[:, None]
  intra = float(np.mean(np.linalg.norm(emb - centroids[y], axis=1)))
  cd = np.sqrt(_pairwise_sq_dists(centroids))
  iu = np.triu_indices(classes.size, k=1)
  inter = float(np.mean(cd[iu]))
  if inter == 0.0:
    return float("inf") if intra > 0 else float("nan")
  return intra / inter


def embedding_metrics(emb: np.ndarray, labels: np.ndarray, *,
                      max_samples: int = 2000, k: int = 5,
                      seed: int = 0) -> dict[str, float]:
  """Cluster-quality numbers of an embedding.

  Args:
    emb: ``(N, D)`` embeddings.
    labels: ``(N,)`` labels.
    max_samples: silhouette and k-NN use a deterministic random subset of at
      most this many samples.
    k: neighbours of the k-NN vote.
    seed: seed of the subset.

  Returns:
    ``silhouette`` (Euclidean; NaN unless 2 <= classes < samples),
    ``knn_accuracy`` (leave-one-out), ``intra_inter_ratio`` (on every sample),
    and ``num_samples`` (size of the subset).

  References:
    Rousseeuw 1987 (silhouette).
  """
  from sklearn.metrics import silhouette_score  # pylint: disable=g-import-not-at-top

  emb, labels = _check(emb, labels)
  idx = subsample_indices(emb.shape[0], max_samples, seed)
  sub, sub_labels = emb[idx], labels[idx]
  num_classes = np.unique(sub_labels).size
  if 2 <= num_classes < sub.shape[0]:
    silhouette = float(silhouette_score(sub, sub_labels, metric="euclidean"))
  else:
    silhouette = float("nan")
  return {
      "silhouette": silhouette,
      "knn_accuracy": knn_accuracy(sub, sub_labels, k),
      "intra_inter_ratio": intra_inter_ratio(emb, labels),
      "num_samples": float(idx.size),
  }


def tsne_2d(emb: np.ndarray, *, seed: int = 0,
            max_samples: int = 2000) -> tuple[np.ndarray, np.ndarray]:
  """2-D t-SNE of a deterministic subset of the embeddings.

  Args:
    emb: ``(N, D)`` embeddings, ``N >= 2``.
    seed: seed of the subset and of t-SNE.
    max_samples: at most this many points are embedded.

  Returns:
    ``(coords, idx)``: ``(M, 2)`` float coordinates and the ``(M,)`` indices
    of the embedded rows of ``emb``.

  References:
    van der Maaten and Hinton, JMLR 2008.
  """
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top

  emb = np.asarray(emb, np.float64)
  if emb.ndim != 2 or emb.shape[0] < 2:
    raise ValueError(f"tsne_2d: expected (N >= 2, D) embeddings, got {emb.shape}")
  idx = subsample_indices(emb.shape[0], max_samples, seed)
  x = emb[idx]
  perplexity = float(min(30.0, x.shape[0] / 4.0))
  perplexity = min(max(perplexity, 1.0), x.shape[0] - 1.0)
  tsne = TSNE(n_components=2, init="pca", perplexity=perplexity,
              random_state=seed)
  coords = tsne.fit_transform(x)
  return np.asarray(coords, np.float64), idx
