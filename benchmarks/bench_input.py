"""Input-pipeline throughput (decode + augment + batch), images per second.

64 px: in-memory uint8 arrays of brain_tumor_mri_64.npz (train split).
224 px: the 1311 real 224x224 JPEGs of brain_tumor_mri_test_224_jpeg.tar,
extracted to a temp folder and decoded with PIL per example.

  python benchmarks/bench_input.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import tarfile
import tempfile
import time


from ols_jax import data  # pylint: disable=g-import-not-at-top
from ols_jax import paths  # pylint: disable=g-import-not-at-top
from ols_jax.data import sources  # pylint: disable=g-import-not-at-top


def _jpeg_source(tmp: pathlib.Path) -> sources.FileListSource:
  tar_path = (paths.dataset_dir("brain_tumor_mri")
              / "brain_tumor_mri_test_224_jpeg.tar")
  with tarfile.open(tar_path) as tar:
    members = [m for m in tar.getmembers() if m.isfile()]
    tar.extractall(tmp, members=members, filter="data")
  files = sorted(str(tmp / m.name) for m in members)
  classes = sorted({pathlib.Path(f).parent.name for f in files})
  labels = [classes.index(pathlib.Path(f).parent.name) for f in files]
  return sources.FileListSource(files, labels)


def measure(source, *, image_size, num_workers, batch_size, num_batches,
            augment="crop_flip") -> float:
  """Images/s over ``num_batches`` after one warm-up batch."""
  it = data.train_iterator(source, global_batch_size=batch_size,
                           image_size=image_size, channels=3, seed=0,
                           augment=augment, num_workers=num_workers)
  num_batches = min(num_batches, len(it) - 1)
  next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
  elapsed = time.perf_counter() - start
  assert batch["image"].shape == (batch_size, image_size, image_size, 3)
  it.close()
  return num_batches * batch_size / elapsed


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--quick", action="store_true",
                      help="fewer batches (about 20 s in all)")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--json", type=pathlib.Path, default=None)
  args = parser.parse_args()
  num_batches = 4 if args.quick else 16
  npz64 = data.load_dataset("brain_tumor_mri", image_size=64)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    jpeg224 = _jpeg_source(pathlib.Path(tmp))
    cases = (("npz uint8 64px", npz64.splits["train"], 64),
             ("JPEG 224px", jpeg224, 224))
    for label, source, size in cases:
      for workers in (0, 2):
        ips = measure(source, image_size=size, num_workers=workers,
                      batch_size=args.batch_size, num_batches=num_batches)
        row = {"input": label, "image_size": size, "num_workers": workers,
               "augment": "crop_flip", "channels": 3,
               "batch_size": args.batch_size, "images_per_s": round(ips, 1)}
        results.append(row)
        print(f"{label:16s} size={size:3d} workers={workers} "
              f"{ips:9.1f} images/s")
  if args.json:
    args.json.write_text(json.dumps(
        {"machine": platform.platform(), "results": results}, indent=2))


if __name__ == "__main__":
  main()
