"""Pure algorithm functions (no Ray, no I/O): GRPO math, the SFT loss, and the algorithm registry.

`register`, `Algorithm`, `AlgorithmSpec` and `resolve` are the plug-in API (algorithms/registry.py);
importing this package registers the built-in entries (algorithms/entries.py).
"""

from rl_pipeline.algorithms import entries as _entries  # noqa: F401  (registers the built-ins)
from rl_pipeline.algorithms.registry import Algorithm, AlgorithmError, AlgorithmSpec, register, registered, resolve

__all__ = ["Algorithm", "AlgorithmError", "AlgorithmSpec", "register", "registered", "resolve"]
