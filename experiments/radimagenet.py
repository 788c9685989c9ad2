"""Train and evaluate one method/model/dataset: the project's main job.

  python experiments/radimagenet.py --config=experiments/configs/smoke.py --workdir=runs/smoke

Every config field can be overridden: --config.method=ce --config.seed=1 ...
Rerunning the same command on the same workdir resumes the run.

Several processes (hosts), each running the same command:
  ... --distributed                       # SLURM, Open MPI, Cloud TPU: auto-detected
  ... --distributed --coordinator_address=HOST:PORT --num_processes=N --process_id=I
experiments/launch_local.py starts N such processes on this machine.

The command line lives in the library: ``python -m ols_jax.cli`` is the same job.
"""

from absl import flags

from ols_jax import cli

cli.define_flags()
flags.adopt_module_key_flags(cli)  # --help lists the job's flags
main = cli.main  # tests/fault_entry.py runs it with fault hooks

if __name__ == "__main__":
  cli.run()
