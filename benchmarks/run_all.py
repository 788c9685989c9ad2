"""The whole benchmark suite in one command: prints a table, writes JSON.

  nice python benchmarks/run_all.py --quick --json benchmarks/results/cpu.json
  python benchmarks/run_all.py --render benchmarks/results/cpu_xeon.json
  python benchmarks/run_all.py --render_into docs/PERFORMANCE.md

Sections: OLS overhead vs CE (ResNet-18 x0.25, 28 px, b128, K=4/165), OLS
cost vs K (small backbone, K=4..10000: step ratio, boundary, memory), compile
cold/warm and eval throughput, 1/2/4 fake CPU devices (jit + pmap, equality
with 1 device), input pipeline vs training throughput, the main job's loop vs
its compiled step (``bench_loop.py``, radmix), the whole job vs a PyTorch job
(``bench_e2e.py``, radmix; when torch is installed), and optionally PyTorch vs
JAX per step (``--torch``, ``bench_torch.py``) and the model zoo's train step
(``--models``, ``bench_models.py``, every model at 64 px).
PyTorch: ``pip install -r benchmarks/requirements.txt``.

``--render FILE...`` runs nothing: it prints the markdown table of result
files already written (this suite's, or one of the single scripts').
``--render_into docs/PERFORMANCE.md`` rewrites that page's tables from the
files its ``<!-- table: FILE -->`` markers name.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import common

HERE = pathlib.Path(__file__).resolve().parent
NO_TORCH = "skipped: torch is not installed (pip install -r benchmarks/requirements.txt)"


def pipeline_vs_model(quick: bool) -> list:
  """Input-pipeline images/s vs train-step images/s at 64 and 224 px."""
  import tempfile  # pylint: disable=import-outside-toplevel
  import bench_input  # pylint: disable=import-outside-toplevel
  from ols_jax import data  # pylint: disable=import-outside-toplevel
  from ols_jax import parallel  # pylint: disable=import-outside-toplevel
  rows = []
  batch = 128
  with tempfile.TemporaryDirectory() as tmp:
    cases = [("npz uint8 64px", lambda: data.load_dataset(
        "brain_tumor_mri", image_size=64).splits["train"], 64,
              "resnet18", True)]
    cases.append(("JPEG 224px", lambda: bench_input._jpeg_source(  # pylint: disable=protected-access
        pathlib.Path(tmp)), 224, "resnet18", False))
    for label, source_fn, size, model, small in cases:
      source = source_fn()
      pipe = bench_input.measure(source, image_size=size, num_workers=0,
                                 batch_size=batch,
                                 num_batches=2 if quick else 8)
      # Training throughput: ResNet-18 x0.25 (the CPU-sized model) at size.
      step, mesh = common.jit_step("ols", 4)
      st = common.make_state(model, 4, size, width=0.25, small_input=small)
      runner = common.StepRunner(step, parallel.replicate_on_mesh(st, mesh),
                                 parallel.put_batch(common.make_batch(
                                     batch, size, 4), mesh))
      runner(1)
      n = 1 if quick else 3
      train = n * batch / runner(n)
      rows.append({"input": label, "image_size": size, "num_workers": 0,
                   "pipeline_images_per_s": pipe,
                   "model": f"{model} x0.25", "train_images_per_s": train,
                   "pipeline_over_train": pipe / train})
      print(f"{label:16s} pipeline {pipe:8.1f} img/s   train ({model} x0.25)"
            f" {train:8.1f} img/s   ratio {pipe / train:.1f}x", flush=True)
  return rows


def script(name: str, *args: str) -> dict:
  """``benchmarks/<name> *args`` in its own process (it sets up its own CPU
  devices, which must happen before JAX starts); the JSON it writes, less the
  machine facts this suite records once."""
  out = common.run_script(HERE / name, args)
  out.pop("machine", None)
  return out


def loop(quick: bool) -> dict:
  """The main job's loop vs its compiled step on the default radmix config."""
  return script("bench_loop.py", f"--epochs={2 if quick else 3}")


def e2e(quick: bool) -> dict:
  """The whole main job vs a PyTorch job doing the same work (radmix)."""
  return script("bench_e2e.py", f"--epochs={1 if quick else 3}",
                f"--rounds={1 if quick else 2}")


def table(results: dict) -> str:
  lines = []
  add = lines.append
  add("| section | setting | value |")
  add("|---|---|---|")
  def isolated(r):
    return (f", OLS work alone {r['isolated_ols_ms']:.3f} ms "
            f"({r['isolated_pct_of_ce_step']:.2f}% of the CE step)"
            if "isolated_ols_ms" in r else "")

  for r in results.get("ols_overhead", []):
    add(f"| OLS vs CE step | {r['model']} x{r['width']} {r['image_size']}px "
        f"b{r['batch_size']} K={r['K']} | ce {r['ce_step_ms']:.1f} ms, ols "
        f"{r['ols_step_ms']:.1f} ms, ratio {r['ols_over_ce']:.3f} "
        f"({r['overhead_pct']:+.1f}%), boundary {r['boundary_ms']:.2f} ms, S+sums+counts "
        f"{r['accumulator_bytes'] / 2**20:.2f} MiB{isolated(r)} |")
  for r in results.get("ols_scaling", []):
    add(f"| OLS vs K | {r['model']} x{r['width']} K={r['K']} | ratio "
        f"{r['ols_over_ce']:.3f} ({r['overhead_pct']:+.1f}%), boundary "
        f"{r['boundary_ms']:.2f} ms, S+sums+counts "
        f"{r['accumulator_bytes'] / 2**20:.2f} MiB{isolated(r)} |")
  c = results.get("compile_eval")
  if c:
    add(f"| compile train step | {c['model']} x{c['width']} {c['image_size']}px"
        f" | cold {c['cold_compile_s']:.2f} s, warm cache "
        f"{c['warm_compile_s']:.2f} s |")
    add(f"| eval throughput | {c['model']} x{c['width']} {c['image_size']}px "
        f"b{c['batch_size']} | {c['eval_images_per_s']:.0f} img/s |")
  for r in results.get("scaling", []):
    add(f"| devices | {r['devices']} fake CPU, {r['path']} | "
        f"{r['images_per_s']:.1f} img/s, max|dS| {r['max_abs_diff_S']:.1e}, "
        f"max|dparams| {r['max_abs_diff_params']:.1e} |")
  for r in results.get("input", []):
    add(f"| input pipeline | {r['input']}, {r['num_workers']} workers, b{r['batch_size']} | "
        f"{r['images_per_s']:.0f} img/s |")
  for r in results.get("pipeline", []):
    add(f"| pipeline vs train | {r['input']} | pipeline "
        f"{r['pipeline_images_per_s']:.0f} img/s, train "
        f"{r['train_images_per_s']:.1f} img/s, {r['pipeline_over_train']:.1f}x |")
  for r in results.get("torch", []):
    one = (f"; JAX on 1 device {r['jax_1dev_images_per_s']:.1f} img/s (x"
           f"{r['jax_1dev_speedup_vs_torch']:.2f}); {r.get('jax_devices', 1)} devices vs 1, "
           f"paired: x{r['devices_speedup']:.2f}"
           if "jax_1dev_images_per_s" in r else "")
    add(f"| torch vs JAX | ResNet-18 x{r.get('width', 1.0):g} {r['image_size']}px "
        f"b{r['batch_size']} K={r['K']} | "
        f"JAX ({r.get('jax_devices', 1)} CPU devices) {r['jax_images_per_s']:.1f} "
        f"img/s, torch {r['torch_images_per_s']:.1f} img/s, JAX x"
        f"{r['jax_speedup_vs_torch']:.2f}{one} |")
  r = results.get("loop")
  if r:
    add(f"| loop vs compiled step | {pathlib.Path(r['config']).stem} "
        f"{r['method']}, {r['devices']} devices | loop "
        f"{r['loop_images_per_s']:.0f} img/s, step on a fixed batch "
        f"{r['fixed_batch_images_per_s']:.0f} img/s, overhead "
        f"{100 * r['loop_overhead']:+.1f}%; validation + checkpoints "
        f"{100 * r['per_epoch_share']:.1f}% of an epoch; fixed costs "
        f"{100 * r['fixed_share_at_target']:.1f}% of {r['target_epochs']} epochs |")
    if "train_phase_s" in r:
      # The fixed cost (bench_loop.py: wall minus the steady epochs, their
      # validation and checkpoints), split into its pieces.
      steady = sorted(r["train_phase_s"][1:] or r["train_phase_s"])
      steady = steady[len(steady) // 2]
      extra = r["train_phase_s"][0] - steady
      rest = (r["wall_s"] - r["setup_s"] - sum(r["train_phase_s"])
              - sum(r["validation_s"]) - r["checkpoint_s"] - r["final_s"])
      add(f"| loop: fixed cost | {r['fixed_s']:.1f} s | set-up {r['setup_s']:.1f} s + epoch 1 "
          f"beyond a steady epoch {extra:.1f} s (compile {r['compile_s']:.1f} s inside it) + "
          f"final evaluation and report {r['final_s']:.1f} s (report, figures, t-SNE "
          f"{r['report_s']:.1f} s of it) + between-epoch rest {rest:.1f} s |")
      add(f"| loop: per epoch | {r['per_epoch_s']:.2f} s | validation "
          f"{sum(r['validation_s']) / len(r['validation_s']):.2f} s (mean) + checkpoints "
          f"{r['checkpoint_s'] / len(r['train_phase_s']):.2f} s |")
  for side, v in results.get("e2e", {}).get("summary", {}).items():
    ratio = (f", x{v['time_ratio_vs_torch']:.2f} the torch job's time"
             if "time_ratio_vs_torch" in v else "")
    add(f"| whole job | {side}, epochs={results['e2e']['epochs']} | wall "
        f"{v['wall_s']:.1f} s, train {v['train_images_per_s']:.0f} img/s{ratio} |")
  # Written by the convolution kernel timing (bench_conv.py, removed; see
  # docs/PERFORMANCE.md): rendered for the committed result file.
  totals = results.get("totals_s")
  if totals:
    for kernel, name in (("fwd", "forward"), ("dx", "input gradient"),
                         ("dw", "weight gradient")):
      add(f"| conv kernels, sum of {len(results['rows'])} | {name} | XLA CPU "
          f"{1e3 * totals['lax'][kernel]:.0f} ms, PyTorch {1e3 * totals['torch'][kernel]:.0f} "
          f"ms, XLA / PyTorch {totals['lax'][kernel] / totals['torch'][kernel]:.1f} |")
  for r in results.get("models", []):
    mem = ("n/a" if r.get("xla_memory_mib") is None
           else f"{r['xla_memory_mib']:.0f} MiB")
    add(f"| model train step | {r['model']} x{r['width']:g} {r['size']}px b{r['batch']} "
        f"{r['dtype']} | {r['images_per_s']:.1f} img/s, compile {r['compile_s']:.1f} s, "
        f"XLA memory {mem}, {r['params']:,} params |")
  # Written by the XLA flag screen (bench_xla_flags.py, removed; see
  # docs/PERFORMANCE.md): rendered for the committed result file.
  for r in results.get("xla_flags", []):
    if not r.get("error"):
      add(f"| XLA flags | {r['setting']} | {r['step_ms']:.0f} ms/step, "
          f"x{r['time_vs_default']:.3f} vs default |")
  return "\n".join(lines)


def as_sections(data: dict) -> dict:
  """A result file as this suite's sections: run_all's own files pass
  through; a single script's output is put under its section name."""
  if "loop_overhead" in data:
    return {"loop": data}
  if "runs" in data and "summary" in data:
    return {"e2e": data}
  rows = data.get("results")
  if isinstance(rows, list) and rows and "input" in rows[0]:  # bench_input.py
    return {"input": rows}
  if isinstance(rows, list):  # bench_models.py
    return {"models": rows}
  return data


MARK_START, MARK_END = "<!-- table: ", "<!-- end table -->"


def file_table(path) -> str:
  """The markdown table of one result file (plus its total, if any)."""
  data = json.loads((common.ROOT / path).read_text())
  out = table(as_sections(data))
  secs = data.get("section_seconds")
  if secs:
    out += f"\n\ntotal {sum(secs.values()):.0f} s"
  return out


def render_into(doc) -> None:
  """Rewrites every ``<!-- table: FILE -->`` ... ``<!-- end table -->``
  block of a markdown page with FILE's table (FILE relative to the
  repository root); runs nothing."""
  doc = pathlib.Path(doc)
  lines, out, skipping = doc.read_text().splitlines(), [], False
  for line in lines:
    stripped = line.strip()
    if stripped.startswith(MARK_START):
      out.append(line)
      out.append("")
      out.extend(file_table(stripped[len(MARK_START):].split(" -->")[0].strip()).splitlines())
      out.append("")
      skipping = True
    elif stripped == MARK_END:
      out.append(line)
      skipping = False
    elif not skipping:
      out.append(line)
  if skipping:
    raise SystemExit(f"error: {doc}: a '{MARK_START}...' block has no '{MARK_END}'")
  doc.write_text("\n".join(out) + "\n")
  print(f"rewrote the result tables of {doc}")


def render(paths) -> None:
  """Prints the table of each result file (nothing is run)."""
  for path in paths:
    data = json.loads(pathlib.Path(path).read_text())
    m = data.get("machine") or {}
    if isinstance(m, str):  # bench_input.py records the platform string only
      host = m
    else:
      host = (f"{m.get('cpu', '?')}, {m.get('os_cpu_count', '?')} cores, jax "
              f"{m.get('jax', '?')}, {m.get('devices', '?')} device(s)") if m else "host not recorded"
    print(f"`{path}` ({host})\n")
    print(table(as_sections(data)))
    secs = data.get("section_seconds")
    if secs:
      print(f"\ntotal {sum(secs.values()):.0f} s")
    print()


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--torch", action="store_true", help="PyTorch comparison")
  p.add_argument("--models", action="store_true",
                 help="train step of every model at 64 px (bench_models.py)")
  p.add_argument("--render", nargs="+", type=pathlib.Path, default=None,
                 metavar="FILE", help="print the tables of result files; runs nothing")
  p.add_argument("--render_into", type=pathlib.Path, default=None, metavar="DOC",
                 help="rewrite the '<!-- table: FILE -->' blocks of a markdown page "
                      "with FILE's table; runs nothing")
  p.add_argument("--skip", default="", help="comma list of sections to skip")
  p.add_argument("--json", type=pathlib.Path,
                 default=pathlib.Path("benchmarks/results/cpu.json"))
  a = p.parse_args()
  if a.render or a.render_into:
    if a.render:
      render(a.render)
    if a.render_into:
      render_into(a.render_into)
    return
  skip = set(filter(None, a.skip.split(",")))
  q = a.quick
  results, timings = {"machine": common.machine_info(), "quick": q}, {}

  def section(name, fn, needs_torch=False):
    if name in skip:
      return
    if needs_torch and not common.torch_available():
      print(f"== {name} {NO_TORCH}", flush=True)
      return
    t0 = time.perf_counter()
    print(f"== {name}", flush=True)
    results[name] = fn()
    timings[name] = time.perf_counter() - t0

  import bench_ols_overhead  # pylint: disable=import-outside-toplevel
  section("ols_overhead", lambda: bench_ols_overhead.run(
      [4, 165], model="resnet18", width=0.25, image_size=28, batch_size=128,
      windows=5 if q else 9, steps=2 if q else 4))
  section("ols_scaling", lambda: bench_ols_overhead.run(
      [4, 165, 1000, 10000], model="tiny_cnn", width=1.0, image_size=28,
      batch_size=128, windows=5 if q else 9, steps=3 if q else 6))
  import bench_compile_eval  # pylint: disable=import-outside-toplevel
  section("compile_eval", lambda: bench_compile_eval.run(
      model="resnet18", width=0.25, size=28))
  import bench_scaling  # pylint: disable=import-outside-toplevel
  section("scaling", lambda: bench_scaling.run(
      (1, 2, 4), steps=2 if q else 4, model="tiny_cnn" if q else "resnet18",
      width=1.0 if q else 0.25))
  section("pipeline", lambda: pipeline_vs_model(q))
  section("loop", lambda: loop(q))
  section("e2e", lambda: e2e(q), needs_torch=True)
  if a.torch:
    section("torch", lambda: script(
        "bench_torch.py", "--sizes", "28" if q else "28,64",
        "--windows", "3" if q else "5")["torch"], needs_torch=True)
  if a.models:
    import bench_models  # pylint: disable=import-outside-toplevel
    section("models", lambda: [bench_models.bench_one(
        name, 64, 8, channels=3, num_classes=4, width=1.0, small_input=False,
        dtype="float32", warmup=1, windows=2 if q else 3, steps=1 if q else 2)
                               for name in bench_models.DEFAULT_MODELS])
  results["section_seconds"] = timings
  print()
  print(table(results))
  print(f"\ntotal {sum(timings.values()):.0f} s")
  common.write_json(a.json, results, default=float)


if __name__ == "__main__":
  main()
