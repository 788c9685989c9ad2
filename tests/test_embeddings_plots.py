"""Tests of ols_jax.embeddings and ols_jax.plots."""

import os

import jax
import numpy as np
import pytest

from ols_jax import embeddings, metrics, plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _clusters(n_per, k, dim, spread, seed):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(k, dim)) * 10.0
  labels = np.repeat(np.arange(k), n_per)
  emb = centers[labels] + rng.normal(size=(n_per * k, dim)) * spread
  return emb, labels


def test_separated_clusters_score_better_than_mixed():
  sep_emb, labels = _clusters(60, 4, 8, spread=0.3, seed=0)
  mix_emb, _ = _clusters(60, 4, 8, spread=30.0, seed=0)
  sep = embeddings.embedding_metrics(sep_emb, labels)
  mix = embeddings.embedding_metrics(mix_emb, labels)
  assert sep["knn_accuracy"] == 1.0
  assert sep["silhouette"] > 0.8
  assert sep["silhouette"] > mix["silhouette"] + 0.5
  assert mix["knn_accuracy"] < 0.8
  assert sep["intra_inter_ratio"] < 0.1 < mix["intra_inter_ratio"]
  assert sep["num_samples"] == 240.0


def test_silhouette_matches_sklearn_and_subsample_is_deterministic():
  from sklearn.metrics import silhouette_score  # pylint: disable=g-import-not-at-top
  emb, labels = _clusters(50, 3, 5, spread=3.0, seed=1)
  got = embeddings.embedding_metrics(emb, labels, max_samples=1000)
  np.testing.assert_allclose(got["silhouette"], silhouette_score(emb, labels))
  a = embeddings.embedding_metrics(emb, labels, max_samples=60, seed=3)
  b = embeddings.embedding_metrics(emb, labels, max_samples=60, seed=3)
  assert a == b and a["num_samples"] == 60.0
  idx = embeddings.subsample_indices(150, 60, seed=3)
  assert idx.shape == (60,) and np.all(np.diff(idx) > 0)
  np.testing.assert_array_equal(embeddings.subsample_indices(5, 60),
                                np.arange(5))


def test_knn_accuracy_small_examples():
  # Points on a line: 0, 1, 2 (class a) and 10, 11, 30 (class b).
  emb = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [30.0]])
  labels = np.array(["a", "a", "a", "b", "b", "b"])
  # k = 1: nearest of 10 is 11 (b); of 30 is 11 (b); of 2 is 1 (a).
  assert embeddings.knn_accuracy(emb, labels, k=1) == 1.0
  # k = 2: 10 -> {11, 2}: tie a/b, nearest is 11 -> b. 30 -> {11, 10} -> b.
  assert embeddings.knn_accuracy(emb, labels, k=2) == 1.0
  # k = 5 with 6 points: everyone sees all others; class a points see 2 a +
  # 3 b -> wrong; class b points see 3 a + 2 b -> wrong.
  assert embeddings.knn_accuracy(emb, labels, k=5) == 0.0


def test_knn_accuracy_matches_brute_force():
  rng = np.random.default_rng(4)
  emb = rng.normal(size=(80, 3))
  labels = rng.integers(0, 3, 80)
  d = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  hits = 0
  for i in range(80):
    near = np.argsort(d[i], kind="stable")[:5]
    votes = np.bincount(labels[near], minlength=3)
    tied = np.flatnonzero(votes == votes.max())
    pred = next(labels[j] for j in near if labels[j] in tied)
    hits += pred == labels[i]
  np.testing.assert_allclose(embeddings.knn_accuracy(emb, labels, k=5),
                             hits / 80)


def test_intra_inter_ratio_known_value():
  emb = np.array([[0.0, 1.0], [0.0, -1.0], [4.0, 1.0], [4.0, -1.0]])
  labels = np.array([0, 0, 1, 1])
  # Every point is 1 from its centroid; the centroids are 4 apart.
  np.testing.assert_allclose(embeddings.intra_inter_ratio(emb, labels), 0.25)
  assert np.isnan(embeddings.intra_inter_ratio(emb, np.zeros(4, int)))


@pytest.mark.slow  # sklearn's t-SNE import and fit: ~10 s
def test_tsne_2d_keeps_separated_clusters_apart():
  emb, labels = _clusters(20, 3, 6, spread=0.5, seed=5)
  coords, idx = embeddings.tsne_2d(emb, seed=0, max_samples=40)
  assert coords.shape == (40, 2) and idx.shape == (40,)
  assert np.all(np.isfinite(coords))
  assert np.all(np.diff(idx) > 0) and idx.max() < 60
  # Every embedded point's nearest 2-D neighbour comes from its own cluster.
  d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  sub = labels[idx]
  assert np.all(sub[np.argmin(d, axis=1)] == sub)


# ---------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sums():
  rng = np.random.default_rng(0)
  logits = (rng.normal(size=(300, 5)) * 3).astype(np.float32)
  labels = rng.integers(0, 5, 300).astype(np.int32)
  return jax.device_get(metrics.eval_sums(logits, labels, None))


def _check_png(path, returned):
  assert returned == os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(8)
  assert head == PNG_MAGIC
  assert os.path.getsize(path) > 1000
  leftovers = [n for n in os.listdir(os.path.dirname(path)) if ".tmp" in n]
  assert not leftovers


def test_reliability_plots(tmp_path, sums):
  path = tmp_path / "rel.png"
  _check_png(path, plots.reliability_diagram(sums, path, "Baseline"))
  curve = metrics.reliability_curve(sums)
  path = tmp_path / "sub" / "rel_curve.png"  # folder is created
  _check_png(path, plots.reliability_diagram(curve, path, "From curve"))
  path = tmp_path / "combined.png"
  curves = {"CE": sums, "LS": curve, "OLS": sums, "OLS+T": curve, "x": sums}
  _check_png(path, plots.combined_reliability(curves, path))


@pytest.mark.parametrize("k", [4, 40])
def test_soft_label_heatmap(tmp_path, k):
  rng = np.random.default_rng(k)
  s = rng.dirichlet(np.ones(k), size=k)
  names = [f"a_rather_long_class_name_{i}" for i in range(k)]
  path = tmp_path / f"heat{k}.png"
  _check_png(path, plots.soft_label_heatmap(s, names, path, "S"))


def test_curves_and_scatter(tmp_path):
  rng = np.random.default_rng(1)
  path = tmp_path / "entropy.png"
  _check_png(path, plots.row_entropy_curve(rng.random((12, 6)), path))
  records = [{"epoch": e, "train/loss": 2.0 / (e + 1),
              "train/accuracy": 1 - 1 / (e + 2), "eval/top1_error": 0.3,
              "eval/ece": float("nan") if e == 2 else 0.05}
             for e in range(6)]
  records.append({"epoch": 6, "train/loss": 0.2})  # partial record
  path = tmp_path / "train.png"
  _check_png(path, plots.training_curves(records, path))
  path = tmp_path / "train_empty.png"
  _check_png(path, plots.training_curves([{"epoch": 0}], path))
  coords = rng.normal(size=(90, 2))
  labels = np.arange(90) % 3
  path = tmp_path / "tsne.png"
  _check_png(path, plots.tsne_scatter(coords, labels, ["x", "y", "z"], path,
                                      "t-SNE"))
  path = tmp_path / "tsne_many.png"
  _check_png(path, plots.tsne_scatter(coords, np.arange(90) % 25, None, path,
                                      "many"))


def test_overwrites_existing_file(tmp_path):
  path = tmp_path / "e.png"
  path.write_bytes(b"old")
  plots.row_entropy_curve(np.ones((3, 2)), str(path))
  _check_png(path, os.fspath(path))
