"""The architecture's promises: a method is one file (a toy method with a host-side phase trains
through the runner from this file alone), the experiments know no method by name, and the
project's modules import each other without a cycle."""
import ast
import dataclasses
import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from iib_jax import checkpoint, losses, methods
from iib_jax.methods import base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("iib_jax", "data_prep", "experiments", "benchmarks")


# ----------------------------------------------------------------------------------------------
# A method defined here, registered at run time, trained by the unchanged runner


@dataclasses.dataclass(frozen=True)
class ToyOptions(base.Options):
  decay: float = 0.5          # the loss weight is multiplied by this after every epoch

  def validate(self, modalities):
    base.require(0 < self.decay <= 1, "decay", self.decay, "a number in (0, 1]")


def build_toy(options: ToyOptions, spec: base.MethodSpec) -> base.Method:
  del spec

  def loss(outputs, batch, state, step):
    del step
    fused = losses.masked_mean(losses.cross_entropy(outputs["fused_logits"], batch["label"]),
                               batch.get("mask"))
    heads = base.unimodal_ce(outputs["logits"], batch)
    return state["weight"] * fused + heads.sum(), {"metrics": {"toy_weight": state["weight"]}}

  def hooks(context):
    def between_epochs(epoch, state, val):
      weight = state.method["weight"] * options.decay     # host-side: a new value in the state
      return state.replace(method=context.put({"weight": jnp.asarray(weight, jnp.float32)}))
    return base.Hooks(between_epochs=between_epochs)

  return base.Method(name="toy", init_state=lambda: {"weight": jnp.ones((), jnp.float32)},
                     loss=loss, hooks=hooks, model={"fusion": "concat", "detach_heads": True})


TOY = base.Definition(name="toy", build=build_toy, options=ToyOptions, display="Toy")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  from tests import commands
  return commands.tiny_dataset(tmp_path_factory)


@pytest.fixture
def toy_registered():
  methods.register(TOY)
  yield TOY
  methods.unregister("toy")


def test_a_method_with_a_host_side_phase_trains_through_the_runner(data_dir, tmp_path,
                                                                   toy_registered):
  from experiments import run as runner
  from experiments.configs import synthetic as synthetic_config
  config = synthetic_config.get_config("smoke")       # the toy's section is generated
  assert config.methods.toy.decay == 0.5
  config.data.dir = data_dir
  config.workdir = str(tmp_path / "run")
  config.method, config.compare_with = "toy", ()
  config.methods.toy.decay = 0.25
  config.optim.epochs = 3
  results = runner.main(config)
  assert results["toy"]["test_best"]["num_examples"] == 6
  records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
  weights = [r["toy_weight"] for r in records
             if r["phase"] == "multimodal" and r["split"] == "train"]
  # The hook ran after every epoch: 1, then 1/4, then 1/16 during the three epochs.
  np.testing.assert_allclose(weights, [1.0, 0.25, 0.0625], rtol=1e-6)
  saved = checkpoint.read_arrays(str(tmp_path / "run"), "latest")
  np.testing.assert_allclose(saved["method"]["weight"], 0.25 ** 3, rtol=1e-6)


def test_an_unknown_option_names_the_key_and_the_accepted_ones(toy_registered):
  spec = base.MethodSpec(("audio", "video"), 3, 4, 1, 1)
  with pytest.raises(ValueError, match=r"methods\.toy\.decai .*did you mean methods\.toy\.decay"
                                       r".*accepted: decay"):
    methods.get_method("toy", {"decai": 0.1}, spec)
  with pytest.raises(ValueError, match=r"invalid config: methods\.toy\.decay=2\.0; accepted"):
    methods.get_method("toy", {"decay": 2.0}, spec)
  with pytest.raises(ValueError, match=r"methods\.ogm_ge\.alfa .*accepted: alpha, "):
    methods.get_method("ogm_ge", {"alfa": 1.0}, spec)


def test_static_facts_are_read_without_building_a_method():
  assert methods.definition("iibalance").needs_budgets
  assert not methods.definition("joint").needs_budgets
  assert methods.definition("ogm_ge").readout(methods.definition("ogm_ge").options()) == \
      "split fusion layer"


# ----------------------------------------------------------------------------------------------
# No method name outside the method files, the registry and the config listing

METHOD_NAMES = ("ogm_ge", "pmr", "gblending", "udi", "bmlmi", "greedy", "agm", "mslr",
                "mmpareto", "ggdm", "iibalance")


def _sources(package, exclude=()):
  for directory, dirs, files in os.walk(os.path.join(ROOT, package)):
    dirs[:] = [d for d in dirs if d != "__pycache__"
               and os.path.join(directory, d) not in exclude]
    for name in files:
      if name.endswith(".py"):
        yield os.path.join(directory, name)


def test_experiments_name_no_method_outside_the_config_listing():
  pattern = re.compile(r"\b(" + "|".join(METHOD_NAMES) + r")\b", re.IGNORECASE)
  found = []
  for path in _sources("experiments", exclude=(os.path.join(ROOT, "experiments", "configs"),)):
    for number, line in enumerate(open(path, encoding="utf-8"), 1):
      if pattern.search(line):
        found.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
  assert not found, "\n".join(found)


# ----------------------------------------------------------------------------------------------
# No import cycle


def _module_name(path):
  rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
  return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def import_graph():
  """{module: {imported project modules}} from every import statement, including the ones
  inside functions (a cycle through a deferred import is still a cycle)."""
  modules = {_module_name(p): p for package in PACKAGES for p in _sources(package)}
  graph = {}
  for name, path in modules.items():
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base_name = node.module or ""
        if node.level:
          parts = package.split(".")[: len(package.split(".")) - node.level + 1]
          base_name = ".".join(parts + ([node.module] if node.module else []))
        # `from pkg import name` imports the submodule pkg.name when there is one.
        targets = [f"{base_name}.{a.name}" if f"{base_name}.{a.name}" in modules else base_name
                   for a in node.names]
      else:
        continue
      for target in targets:
        while target and target not in modules:
          target = target.rpartition(".")[0]
        if target and target != name:
          edges.add(target)
    graph[name] = edges
  return graph


def find_cycle(graph):
  """One import cycle as a list of modules, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_cycle_finder_finds_a_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_the_project_modules():
  graph = import_graph()
  assert "experiments.run" in graph["experiments.sweep"]        # the walk sees imports
  assert "iib_jax.methods.base" in graph["iib_jax.methods.agm"]
  cycle = find_cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_a_mistyped_key_on_the_command_line_is_one_line():
  from tests import commands
  done = commands.run("experiments.synthetic", "--config.methods.ogm_ge.alfa=1", check=False,
                      timeout=120)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1, done.stderr
  assert "methods.ogm_ge.alfa" in lines[0] and "did you mean methods.ogm_ge.alpha" in lines[0]
  assert "alpha, fusion, ge, modulation_end, modulation_start, noise_seed" in lines[0]
