"""A plain PyTorch eager job with the work of the project's main job, for
end-to-end timing against it (``bench_e2e.py``).

Same data (a shared npz), model (ResNet-18 with the small-input stem at a
width multiplier, torchvision layout), optimiser (SGD momentum 0.9, coupled
weight decay, cosine learning rate per step), batch, epochs, augmentation
(pad-and-crop by size // 8 plus horizontal flip, vectorised per batch in
NumPy, flipped labels swapped for lateral classes as the project does) and
evaluation (validation every epoch, test once at the end: top-1 error and
15-bin ECE). Hard-label CE. Prints one JSON line with the figures.

  python benchmarks/torch_job.py --data=../shared/data/radmix/radmix_28.npz --epochs=3
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time

import numpy as np
import torch
from torch import nn


def resnet18(num_classes: int, width: float, channels: int) -> nn.Module:
  """torchvision-layout ResNet-18, 3x3 stride-1 stem, no max-pool."""

  def w(c):
    return max(1, int(round(c * width)))

  class Block(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.down = None
      if stride != 1 or cin != cout:
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                  nn.BatchNorm2d(cout))

    def forward(self, x):
      y = torch.relu(self.bn1(self.conv1(x)))
      y = self.bn2(self.conv2(y))
      return torch.relu(y + (x if self.down is None else self.down(x)))

  layers = [nn.Conv2d(channels, w(64), 3, 1, 1, bias=False), nn.BatchNorm2d(w(64)),
            nn.ReLU(inplace=True)]
  cin = w(64)
  for i, base in enumerate((64, 128, 256, 512)):
    for j in range(2):
      layers.append(Block(cin, w(base), 2 if (i > 0 and j == 0) else 1))
      cin = w(base)
  layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
  return nn.Sequential(*layers)


def flip_map(class_names) -> np.ndarray:
  """Label of a mirrored example (left/right tokens swapped), identity elsewhere."""
  side = re.compile(r"(?<![a-z])(left|right)(?![a-z])", re.IGNORECASE)
  names = [str(n) for n in class_names]
  index = {n: i for i, n in enumerate(names)}
  m = np.arange(len(names))
  for i, n in enumerate(names):
    other = side.sub(lambda g: "right" if g.group(0).lower() == "left" else "left", n)
    if other != n and other in index:
      m[i] = index[other]
  return m


def augment(images: np.ndarray, labels: np.ndarray, rng, mirror: np.ndarray):
  """Vectorised pad-and-crop + flip of a uint8 (B, H, W) batch."""
  b, h, w = images.shape
  pad = h // 8
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
  off = rng.integers(0, 2 * pad + 1, (b, 2))
  rows = off[:, :1] + np.arange(h)
  cols = off[:, 1:] + np.arange(w)
  out = padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
  flip = rng.random(b) < 0.5
  out = np.where(flip[:, None, None], out[:, :, ::-1], out)
  return out, np.where(flip, mirror[labels], labels)


def to_tensor(images: np.ndarray) -> torch.Tensor:
  x = torch.from_numpy(np.ascontiguousarray(images)).float().mul_(2 / 255).sub_(1)
  return x.unsqueeze(1)


def evaluate(model, images, labels, batch_size=512):
  model.eval()
  probs = []
  with torch.no_grad():
    for i in range(0, len(images), batch_size):
      probs.append(torch.softmax(model(to_tensor(images[i:i + batch_size])), 1).numpy())
  model.train()
  p = np.concatenate(probs)
  conf, pred = p.max(1), p.argmax(1)
  correct = pred == labels
  bins = np.minimum((conf * 15).astype(int), 14)
  ece = sum(abs(correct[bins == k].sum() - conf[bins == k].sum()) for k in range(15))
  return float(1 - correct.mean()), float(ece / len(labels))


def main():
  start = time.time()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", required=True)
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--width", type=float, default=0.25)
  p.add_argument("--lr", type=float, default=0.05)
  p.add_argument("--weight_decay", type=float, default=5e-4)
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  torch.manual_seed(a.seed)
  with np.load(a.data) as z:
    d = {k: z[k] for k in z.files}
  train_x, train_y = d["train_images"], d["train_labels"].reshape(-1).astype(np.int64)
  k = int(max(d[f"{s}_labels"].max() for s in ("train", "val", "test"))) + 1
  mirror = flip_map(d["class_names"]) if "class_names" in d else np.arange(k)
  model = resnet18(k, a.width, 1).to(memory_format=torch.channels_last)
  steps = len(train_x) // a.batch_size
  total = steps * a.epochs
  opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9,
                        weight_decay=a.weight_decay)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
  loss_fn = nn.CrossEntropyLoss()
  train_time = 0.0
  for epoch in range(a.epochs):
    t0 = time.time()
    rng = np.random.default_rng([a.seed, epoch])
    order = rng.permutation(len(train_x))
    for s in range(steps):
      idx = order[s * a.batch_size:(s + 1) * a.batch_size]
      x, y = augment(train_x[idx], train_y[idx], rng, mirror)
      out = model(to_tensor(x).contiguous(memory_format=torch.channels_last))
      loss = loss_fn(out, torch.from_numpy(y))
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
    train_time += time.time() - t0
    val_err, val_ece = evaluate(model, d["val_images"],
                                d["val_labels"].reshape(-1).astype(np.int64))
  test_err, test_ece = evaluate(model, d["test_images"],
                                d["test_labels"].reshape(-1).astype(np.int64))
  print(json.dumps({"side": "torch", "epochs": a.epochs, "steps": total,
                    "train_images_per_s": total * a.batch_size / train_time,
                    "wall_s_in_process": time.time() - start, "val_top1_error": val_err,
                    "test_top1_error": test_err, "test_ece": test_ece,
                    "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
