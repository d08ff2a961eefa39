"""The three terms of log α (Eq. 9): prior log β_m, uncertainty −u_m, gate log σ(G_m).

Checked on a tiny M = 3 MultimodalModel against a numpy reference of the whole gated fusion
(unimodal entropies, the gate MLP, α = β · exp(−u) · σ(G)), and on the fixed rules.
"""
import jax
import numpy as np
import pytest

from iib_jax import fusion
from iib_jax.models import build_model
from iib_jax.models.multimodal import GatedFusion
from tests import helpers

BETA = np.array([0.5, 0.3, 0.2], np.float32)
TERM_KEYS = ("log_alpha_prior", "log_alpha_uncertainty", "log_alpha_gate")


def ref_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ref_normalized_entropy_from_logits(logits):
  lp = ref_log_softmax(np.asarray(logits, np.float64))
  return -(np.exp(lp) * lp).sum(-1) / np.log(lp.shape[-1])


def ref_log_sigmoid(x):
  x = np.asarray(x, np.float64)
  return -np.logaddexp(0.0, -x)


def ref_gate(params, uncertainty, feats):
  """The gate MLP G(φ), φ = [u_1..u_M; z_1..z_M] (Eq. 8, Pool = identity), in float64."""
  phi = np.concatenate([uncertainty] + [np.asarray(z, np.float64) for z in feats], -1)
  hidden, out = params["hidden"], params["out"]
  h = np.maximum(phi @ np.asarray(hidden["kernel"], np.float64) + np.asarray(hidden["bias"]), 0)
  return h @ np.asarray(out["kernel"], np.float64) + np.asarray(out["bias"])


@pytest.fixture(scope="module")
def gated_model_outputs():
  model = build_model(helpers.MODALITIES, helpers.ENCODERS, helpers.NUM_CLASSES, feature_dim=16,
                      encoder_size="micro", fusion="gated", gate_hidden=8)
  batch = helpers.separable_batch(np.random.default_rng(0), 4)
  inputs = {m: batch[m] for m in helpers.MODALITIES}
  # One trace and compile: the outputs of the freshly initialised model.
  out, variables = jax.jit(lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False,
                                                            prior=BETA))(inputs)
  return jax.device_get(out), jax.device_get(variables["params"])


def test_summed_terms_normalised_over_modalities_are_the_weights(gated_model_outputs):
  out, _ = gated_model_outputs
  for key in TERM_KEYS:
    assert out[key].shape == (4, 3) and out[key].dtype == np.float32
  log_alpha = sum(np.asarray(out[key], np.float64) for key in TERM_KEYS)
  alpha = np.exp(log_alpha)
  np.testing.assert_allclose(alpha / alpha.sum(1, keepdims=True), out["weights"], rtol=0,
                             atol=1e-6)


def test_terms_match_a_numpy_reference_of_the_gated_fusion(gated_model_outputs):
  out, params = gated_model_outputs
  u = ref_normalized_entropy_from_logits(out["logits"]).T                        # [B, M]
  g = ref_gate(params["fusion"]["gate"], u, out["features"])                       # [B, M]
  np.testing.assert_allclose(out["log_alpha_prior"], np.broadcast_to(np.log(BETA), (4, 3)),
                             rtol=1e-6)
  np.testing.assert_allclose(out["log_alpha_uncertainty"], -u, rtol=0, atol=1e-6)
  np.testing.assert_allclose(out["log_alpha_gate"], ref_log_sigmoid(g), rtol=0, atol=1e-5)
  alpha = BETA[None].astype(np.float64) * np.exp(-u) / (1 + np.exp(-g))
  np.testing.assert_allclose(out["weights"], alpha / alpha.sum(1, keepdims=True), rtol=0,
                             atol=1e-6)
  # The paper's reading of a weight ratio: log(w_a / w_v) = log(β_a / β_v) + (u_v − u_a)
  # + [log σ(G_a) − log σ(G_v)], for every pair of modalities.
  w = np.asarray(out["weights"], np.float64)
  for a in range(3):
    for v in range(3):
      want = (np.log(BETA[a] / BETA[v]) + (u[:, v] - u[:, a])
              + ref_log_sigmoid(g[:, a]) - ref_log_sigmoid(g[:, v]))
      np.testing.assert_allclose(np.log(w[:, a] / w[:, v]), want, rtol=0, atol=1e-5)


def test_log_alpha_terms_by_hand():
  # β = (1/2, 1/4), u = (0, 1), G = (0, 0): terms (log 1/2, log 1/4), (0, −1), (log 1/2, log 1/2);
  # α = (1/4, e^−1 / 8), w_1 = 1 / (1 + e^−1 / 2).
  terms = fusion.log_alpha_terms(np.array([0.5, 0.25]), np.array([[0.0, 1.0]]),
                                 np.array([[0.0, 0.0]]))
  np.testing.assert_allclose(terms.prior, [[np.log(0.5), np.log(0.25)]], rtol=1e-6)
  np.testing.assert_allclose(terms.uncertainty, [[0.0, -1.0]], rtol=1e-6)
  np.testing.assert_allclose(terms.gate, [[np.log(0.5), np.log(0.5)]], rtol=1e-6)
  w1 = 1 / (1 + np.exp(-1) / 2)
  np.testing.assert_allclose(fusion.fusion_weights(np.array([0.5, 0.25]), np.array([[0.0, 1.0]]),
                                                   np.array([[0.0, 0.0]])), [[w1, 1 - w1]],
                             rtol=1e-6)


def test_gate_term_is_finite_for_extreme_logits():
  terms = fusion.log_alpha_terms(np.full(3, 1 / 3), np.zeros((1, 3)),
                                 np.array([[-200.0, 0.0, 200.0]]))
  np.testing.assert_allclose(terms.gate, [[-200.0, np.log(0.5), 0.0]], rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("rule", ["prior", "mean"])
def test_fixed_rules_put_log_w_in_the_prior_term_and_zero_elsewhere(rule):
  rng = np.random.default_rng(1)
  feats = rng.normal(size=(3, 4, 8)).astype(np.float32)
  logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
  module = GatedFusion(num_classes=5, rule=rule)
  variables = module.init(jax.random.PRNGKey(0), feats, logits, BETA)
  out = module.apply(variables, feats, logits, BETA)
  fixed = BETA if rule == "prior" else np.full(3, 1 / 3)
  np.testing.assert_allclose(out["weights"], np.broadcast_to(fixed, (4, 3)), rtol=1e-6)
  np.testing.assert_allclose(out["log_alpha_prior"], np.broadcast_to(np.log(fixed), (4, 3)),
                             rtol=1e-6)
  np.testing.assert_array_equal(out["log_alpha_uncertainty"], np.zeros((4, 3)))
  np.testing.assert_array_equal(out["log_alpha_gate"], np.zeros((4, 3)))
  summed = sum(np.asarray(out[key], np.float64) for key in TERM_KEYS)
  alpha = np.exp(summed)
  np.testing.assert_allclose(alpha / alpha.sum(1, keepdims=True), out["weights"], rtol=0,
                             atol=1e-6)


# ---------------------------------------------------------------------------------------------
# model.gate_input = "uncertainty": φ = [u] only.


def test_gate_input_uncertainty_is_u_alone():
  rng = np.random.default_rng(2)
  u = rng.random((4, 3)).astype(np.float32)
  z = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(3)]
  for pool in ("identity", "mean"):
    np.testing.assert_array_equal(fusion.gate_input(u, z, pool, inputs="uncertainty"), u)
  with pytest.raises(ValueError, match="gate input"):
    fusion.gate_input(u, z, inputs="logits")


@pytest.fixture(scope="module")
def uncertainty_gate():
  """A GatedFusion whose gate reads only u, applied to two feature sets with the same unimodal
  logits (so the same u); one jitted apply, traced once."""
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(2, 3, 4, 8)).astype(np.float32)           # two sets of [M, B, d]
  logits = rng.normal(size=(3, 4, 5)).astype(np.float32)
  module = GatedFusion(num_classes=5, gate_hidden=6, gate_input="uncertainty")
  variables = module.init(jax.random.PRNGKey(0), feats[0], logits, BETA)
  apply = jax.jit(lambda f: module.apply(variables, f, logits, BETA))
  return [jax.device_get(apply(f)) for f in feats], jax.device_get(variables["params"]), logits


def test_uncertainty_gate_has_an_m_wide_input_and_ignores_the_features(uncertainty_gate):
  (first, second), params, logits = uncertainty_gate
  gate = params["gate"]
  assert gate["hidden"]["kernel"].shape == (3, 6) and gate["out"]["kernel"].shape == (6, 3)
  for key in ("gate_logits", "weights") + TERM_KEYS:
    assert first[key].shape == (4, 3)
    np.testing.assert_array_equal(first[key], second[key])          # independent of z for fixed u
  assert not np.allclose(first["fused_logits"], second["fused_logits"])   # Z still reads z
  # numpy reference: G(u) with φ = u (Eq. 8 without the pooled features).
  u = ref_normalized_entropy_from_logits(logits).T
  hidden = np.maximum(u @ np.asarray(gate["hidden"]["kernel"], np.float64)
                      + np.asarray(gate["hidden"]["bias"]), 0)
  g = hidden @ np.asarray(gate["out"]["kernel"], np.float64) + np.asarray(gate["out"]["bias"])
  np.testing.assert_allclose(first["gate_logits"], g, rtol=0, atol=1e-5)
  alpha = BETA[None].astype(np.float64) * np.exp(-u) / (1 + np.exp(-g))
  np.testing.assert_allclose(first["weights"], alpha / alpha.sum(1, keepdims=True), rtol=0,
                             atol=1e-6)


def test_gate_input_is_a_validated_config_key():
  from experiments.configs import common
  config = common.base_config()
  config.data.name = "synthetic"
  assert config.model.gate_input == "features"
  config.model.gate_input = "uncertainty"
  common.validate(config, check_data=False)
  config.model.gate_input = "logits"
  with pytest.raises(ValueError, match=r"model\.gate_input='logits'; accepted: features, "
                                       r"uncertainty"):
    common.validate(config, check_data=False)


def test_run_config_sets_the_gate_input_and_an_older_config_gets_the_default():
  from experiments.configs import common
  from iib_jax import build as lib_build, methods
  method = methods.Method(name="gated", init_state=methods.base.no_state,
                          model={"fusion": "gated"})
  config = common.base_config()
  config.model.gate_input = "uncertainty"
  assert lib_build.model(config, 3, method).gate_input == "uncertainty"
  older = config.to_dict()
  del older["model"]["gate_input"]                 # a config.json written before the key existed
  import ml_collections
  assert lib_build.model(ml_collections.ConfigDict(older), 3, method).gate_input == "features"
