"""What a user sees on the console: rlp's own lines (stages, progress, placement, results) and
every error; the libraries' start-up chatter, progress bars and warnings about expected cases
(a CPU machine has no GPU, vLLM-CPU has no Triton, ...) only with `rlp --verbose`.

`configure(verbose)` runs once in the CLI, before any library is imported. The switch travels
as the environment variable RLP_VERBOSE, so `cluster.connect` (which decides whether Ray's
workers print to this console) and the local Ray instance's workers (which inherit this
process's environment) see it too. Without --verbose, the workers' output (vLLM, DeepSpeed,
transformers) goes to the Ray session's log files only; `cluster.connect` says where in one
line. Exceptions raised in actors still reach the driver and the console.
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "RLP_VERBOSE"

# Progress bars of the Hugging Face libraries (loading / writing weight shards, building a
# dataset's cache); rlp shows its own progress per stage.
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' and the hub's tqdm bars
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def configure(verbose: bool) -> None:
    """Logging format and level, and the quiet settings above unless `verbose`."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)  # a user's own setting wins
    # DeepSpeed logs through its own handler on the "DeepSpeed" logger; the driver imports it
    # (through transformers) only to announce "Setting accelerator to CPU" on a CPU machine.
    logging.getLogger("DeepSpeed").addFilter(lambda record: record.levelno >= logging.ERROR)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def ray_logging() -> dict:
    """`ray.init` keywords: the workers' output and Ray's own INFO/WARNING lines on the console
    only when verbose (errors always)."""
    if verbose():
        return {"log_to_driver": True}
    return {"log_to_driver": False, "logging_level": logging.ERROR}
