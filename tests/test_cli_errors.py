"""cli.call_or_exit: user errors are one line and exit 2; bugs keep their traceback."""

import errno

import pytest

from ols_jax import cli
from ols_jax import config as config_lib
from ols_jax.data import errors


def _raise(e):
  raise e


@pytest.mark.parametrize("exc,line", [
    (config_lib.ConfigError("config.alpha: expected a value in [0, 1], got 2"),
     "error: config.alpha: expected a value in [0, 1], got 2"),
    (errors.DataError("dataset folder x not found\nsecond line"),
     "error: dataset folder x not found"),
    (OSError(errno.ENOSPC, "No space left on device", "/w/ckpt"),
     "error: No space left on device: /w/ckpt")])
def test_user_errors_are_one_line_and_exit_2(exc, line, capsys):
  with pytest.raises(SystemExit) as e:
    cli.call_or_exit(_raise, exc)
  assert e.value.code == 2
  assert capsys.readouterr().err.strip() == line


@pytest.mark.parametrize("exc", [ValueError("shapes (3,) and (4,) differ"),
                                 TypeError("bad operand"), OSError("no errno: a code path")])
def test_internal_errors_propagate_with_their_traceback(exc):
  with pytest.raises(type(exc)):
    cli.call_or_exit(_raise, exc)


def test_debug_reraises_user_errors():
  with pytest.raises(config_lib.ConfigError):
    cli.call_or_exit(_raise, config_lib.ConfigError("x"), debug=True)
