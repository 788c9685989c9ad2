"""Starts one multi-process run of the main job on this machine.

  python experiments/launch_local.py --num_processes=2 -- \
      --config=experiments/configs/smoke.py --workdir=runs/smoke_2proc --cpu_devices=2

Each of the N processes runs ``experiments/radimagenet.py`` with the arguments
after ``--`` plus ``--distributed --coordinator_address=localhost:<free port>
--num_processes=N --process_id=I``. Every output line is prefixed with the
process's rank (``[I] ``). The launcher waits for all of them; when one fails
it stops the others, prints one ``error: ...`` line and exits non-zero. On a
cluster use its launcher instead (SLURM: see README, "Multi-host").
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

ENTRY = pathlib.Path(__file__).resolve().parent / "radimagenet.py"


def free_port() -> int:
  """A TCP port that is free on localhost right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def process_command(entry: str, args: Sequence[str], rank: int, num_processes: int,
                    port: int) -> list[str]:
  """The command line of process ``rank``."""
  return [sys.executable, "-u", str(entry), *args, "--distributed",
          f"--coordinator_address=localhost:{port}",
          f"--num_processes={num_processes}", f"--process_id={rank}"]


def _pump(stream, prefix: bytes, out, lock: threading.Lock) -> None:
  """Copies ``stream`` to ``out`` line by line, each line after ``prefix``."""
  for line in iter(stream.readline, b""):
    with lock:
      out.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
      out.flush()
  stream.close()


def describe_status(code: int) -> str:
  """``exited with status 2`` or ``was killed by SIGKILL``."""
  if code < 0:
    try:
      return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"was killed by signal {-code}"
  return f"exited with status {code}"


def _stop(procs: Sequence[subprocess.Popen], grace_s: float = 5.0) -> None:
  """SIGTERM, then SIGKILL after ``grace_s``, to each running process's group."""
  for sig in (signal.SIGTERM, signal.SIGKILL):
    running = [p for p in procs if p.poll() is None]
    for p in running:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    deadline = time.time() + grace_s
    while any(p.poll() is None for p in running) and time.time() < deadline:
      time.sleep(0.05)


def launch(args: Sequence[str], num_processes: int, *, entry: str = str(ENTRY),
           port: int = 0, env: Optional[dict[str, str]] = None) -> int:
  """Runs ``num_processes`` processes of ``entry``; returns the exit status.

  Returns 0 when every process exits with 0; otherwise the first failure's
  status (128 + signal number for a killed process), after stopping the rest.
  """
  if num_processes < 1:
    print(f"error: --num_processes: expected >= 1, got {num_processes}", file=sys.stderr)
    return 2
  port = port or free_port()
  lock = threading.Lock()
  procs, pumps = [], []
  failed = None
  try:
    for rank in range(num_processes):
      proc = subprocess.Popen(
          process_command(entry, args, rank, num_processes, port),
          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
          start_new_session=True)  # its own group: stopped with its children.
      procs.append(proc)
      prefix = f"[{rank}] ".encode()
      for stream, out in ((proc.stdout, sys.stdout.buffer), (proc.stderr, sys.stderr.buffer)):
        pump = threading.Thread(target=_pump, args=(stream, prefix, out, lock), daemon=True)
        pump.start()
        pumps.append(pump)
    while True:
      codes = [p.poll() for p in procs]
      failed = next(((rank, c) for rank, c in enumerate(codes) if c not in (None, 0)),
                    None)
      if failed is not None or None not in codes:
        break
      time.sleep(0.05)
  finally:
    _stop(procs)
    for pump in pumps:
      pump.join(timeout=5)
  if failed is None:
    return 0
  rank, code = failed
  others = f"; stopped the other {num_processes - 1}" if num_processes > 1 else ""
  print(f"error: process {rank} of {num_processes} {describe_status(code)}{others}",
        file=sys.stderr)
  return code if code > 0 else 128 - code


def main(argv: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n")[0],
      usage="%(prog)s [--num_processes=N] [--port=P] -- ARGS OF radimagenet.py")
  parser.add_argument("--num_processes", type=int, default=2,
                      help="processes to start (default 2)")
  parser.add_argument("--port", type=int, default=0,
                      help="coordinator port on localhost (default: a free one)")
  parser.add_argument("--entry", default=str(ENTRY),
                      help="script to start (default experiments/radimagenet.py)")
  parser.add_argument("args", nargs=argparse.REMAINDER,
                      help="arguments for every process, after --")
  opts = parser.parse_args(argv)
  args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the children too.
  try:
    return launch(args, opts.num_processes, entry=opts.entry, port=opts.port)
  except KeyboardInterrupt:
    print("error: interrupted; stopped every process", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
