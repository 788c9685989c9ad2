"""benchmarks/profile_step.py: the op-kind attribution, and the script at tiny size."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import profile_step  # noqa: E402  pylint: disable=wrong-import-position

HLO = """
%fused_computation.13 (param_0.26: f32[16,4,4,8], param_1.26: f32[4,4,8,8]) -> f32[8,3,3,8] {
  %param_0.26 = f32[16,4,4,8]{3,2,1,0} parameter(0)
  ROOT %convolution.27 = f32[8,3,3,8]{3,2,1,0} convolution(%param_0.26, %param_1.26), window={size=4x4 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%fused_computation.14 (param_0: f32[16,16,16,8]) -> f32[16,16,16,8] {
  ROOT %conv_general_dilated.9 = f32[16,16,16,8]{3,2,1,0} convolution(%param_0, %k), metadata={op_name="jit(train_step)/jvp(ResNet)/layer1_0/conv1/conv_general_dilated"}
}

ENTRY %main {
  %ynn_fusion.13 = f32[8,3,3,8]{3,2,1,0} fusion(%t1, %t2), kind=kCustom, calls=%fused_computation.13, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %ynn_fusion.14 = f32[16,16,16,8]{3,2,1,0} fusion(%t3), kind=kCustom, calls=%fused_computation.14
  %conv_general_dilated.63 = f32[16,16,16,8]{3,2,1,0} convolution(%a, %b), dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/jvp(ResNet)/layer1_1/conv2/conv_general_dilated" stack_frame_id=37}
  %convolution.2 = f32[16,2,2,64]{3,2,1,0} convolution(%c, %d), metadata={op_name="jit(train_step)/transpose(jvp(ResNet))/layer4_0/conv2/conv_general_dilated"}
  %convolution.16 = f32[8,3,3,8]{3,2,1,0} convolution(%e, %f), window={size=16x16 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  %broadcast_multiply_fusion.18 = f32[16,2,2,64]{3,2,1,0} fusion(%g), kind=kLoop, calls=%fc.1, metadata={op_name="jit(train_step)/transpose(jvp(ResNet))/layer4_1/bn1/mul"}
  %transpose_copy_fusion.33 = f32[32,4,4,16]{3,2,1,0} fusion(%h), kind=kLoop, calls=%fc.2
  %copy.449 = f32[3,3,64,64]{3,2,1,0} copy(%p)
  ROOT %add.7 = f32[8]{0} add(%x, %y), metadata={op_name="state.params['layer1_0']['bn1']['scale']"}
}
"""


def test_parse_and_classify_each_kind():
  hlo = profile_step.parse_hlo(HLO)
  assert hlo["convolution.16"] == ("convolution", (8, 3, 3, 8), "", None, "main")
  assert hlo["ynn_fusion.13"][3:] == ("fused_computation.13", "main")
  kernels = {(3, 3, 8, 8), (3, 3, 64, 64)}
  events = [{"ph": "X", "name": n, "dur": d} for n, d in
            [("conv_general_dilated.63", 1.0), ("convolution.2", 2.0), ("convolution.16", 4.0),
             ("broadcast_multiply_fusion.18", 8.0), ("transpose_copy_fusion.33", 16.0),
             ("copy.449", 32.0), ("add.7", 64.0), ("ThunkExecutor::Execute", 1e6),
             ("end: add.7", 1e6), ("ynn_fusion.13", 128.0), ("ynn_fusion.14", 256.0)]]
  got = profile_step.categorise(events, hlo, kernels)
  # The optimiser's update of a BN scale is not batch norm; executor events are not ops.
  # Fusions holding a convolution count as it: a weight gradient (kernel-shaped) and a
  # forward one (its inner metadata).
  assert got == {"conv_forward": 257.0, "conv_input_grad": 2.0, "conv_weight_grad": 132.0,
                 "batch_norm": 8.0, "layout_copy": 48.0, "rest": 64.0}


@pytest.mark.slow
def test_tiny_profile_writes_shares_summing_to_one(tmp_path):
  out = tmp_path / "p.json"
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_step.py"), "--tiny",
                         "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  (case,) = json.loads(out.read_text())["cases"]
  assert abs(sum(case["share"].values()) - 1.0) < 1e-9
  # A ResNet step spends time in all three convolution passes.
  assert min(case["ms_per_step"][c] for c in
             ("conv_forward", "conv_input_grad", "conv_weight_grad")) > 0
