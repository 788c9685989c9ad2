"""benchmarks/device_check.sh at tiny size on the CPU: the GPU check cannot rot."""

import json
import os
import pathlib
import subprocess

import pytest

pytestmark = pytest.mark.slow  # compiles ResNet-50 and runs the main job

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_tiny_device_check_writes_both_files(tmp_path):
  env = dict(os.environ, OUT=str(tmp_path), JAX_PLATFORMS="cpu")
  proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--tiny"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  check = json.loads((tmp_path / "gpu_cpu_check.json").read_text())
  assert check["tiny"] and check["backend"] == "cpu"
  assert [r["case"] for r in check["results"]] == ["tiny_resnet50_32_b4_bf16",
                                                   "tiny_resnet18_16_b8"]
  assert all(r["jax_images_per_s"] > 0 for r in check["results"])
  chunk = json.loads((tmp_path / "gpu_cpu_study_chunk.json").read_text())
  assert chunk["num_epochs"] == 1 and chunk["data_origin"] in ("shared", "embedded")
  assert 0.0 <= chunk["test"]["top1_error"] <= 1.0
  assert (tmp_path / "device_check_cpu.log").read_text().count("study chunk:") == 1
