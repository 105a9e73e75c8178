"""Connect to Ray: join an existing cluster (recipe `cluster.address` or RAY_ADDRESS) or start a
local instance, and shut down only what this process started."""

from __future__ import annotations

import contextlib
import logging
import os

import ray

from rl_pipeline.config import ClusterConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def connect(cfg: ClusterConfig):
    """Yield with Ray initialised; a Ray already initialised by the caller (tests) is reused."""
    if ray.is_initialized():
        yield
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
    try:
        yield
    finally:
        ray.shutdown()
