"""vLLM's per-layer reload warning is dropped only for the layers a weight push never carries."""

import logging

from rl_pipeline.weight_sync.engine_side import RELOAD_LOGGER, RELOAD_WARNING, ExpectedReloadWarnings


def record(layer: str, msg: str = RELOAD_WARNING) -> logging.LogRecord:
    return logging.LogRecord(RELOAD_LOGGER, logging.WARNING, __file__, 1, msg, (layer,), None)


def test_expected_layers_are_quiet_and_every_other_layer_still_warns():
    quiet = ExpectedReloadWarnings({"RotaryEmbedding", "ParallelLMHead"})
    assert not quiet.filter(record("RotaryEmbedding"))
    assert not quiet.filter(record("ParallelLMHead"))
    # A layer that should have received weights and did not is a real failure: it still shows.
    assert quiet.filter(record("QKVParallelLinear"))
    assert quiet.filter(record("RotaryEmbedding", msg="%s: something else"))
    # An untied LM head (not in the expected set) warns too.
    assert ExpectedReloadWarnings({"RotaryEmbedding"}).filter(record("ParallelLMHead"))
