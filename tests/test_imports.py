"""The package's module-level import graph has no cycle."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "ols_jax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """ols_jax modules imported at module level (not in functions or TYPE_CHECKING)."""
  out = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
      continue
    for sub in ([node] if not isinstance(node, (ast.If, ast.Try)) else ast.walk(node)):
      if isinstance(sub, ast.Import):
        out.update(a.name for a in sub.names if a.name in modules)
      elif isinstance(sub, ast.ImportFrom) and sub.module and sub.level == 0:
        for a in sub.names:
          full = f"{sub.module}.{a.name}"
          if full in modules:
            out.add(full)
          elif sub.module in modules:
            out.add(sub.module)
  return out


def import_graph() -> dict[str, set[str]]:
  files = [p for p in PACKAGE.rglob("*.py")]
  modules = {_module_name(p) for p in files}
  return {_module_name(p): _top_level_imports(p, modules) - {_module_name(p)}
          for p in files}


def find_cycle(graph: dict[str, set[str]]):
  """One import cycle as a list of modules, or None (depth-first search)."""
  state, stack = {}, []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_find_cycle_finds_a_planted_cycle_and_accepts_a_dag():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_real_edges():
  graph = import_graph()
  assert "ols_jax.inference" in graph["ols_jax.parallel"]
  assert "ols_jax.steps" not in graph["ols_jax.parallel"]  # imported by the train builders only
  assert "ols_jax.losses" in graph["ols_jax.steps"]


def test_the_package_has_no_module_level_import_cycle():
  assert find_cycle(import_graph()) is None
