"""Failpoints: named places where the fault-injection suite kills this process, as a power cut or kill -9 would.

`ALIGNFLOW_FAILPOINT=<name>[@<n>]` kills the process with SIGKILL the n-th time (by default the first) it
reaches `failpoint("<name>")`. Unset, which is always the case outside `benchmarks/fault_suite.py` and its
test, a failpoint is one environment lookup. The names are listed in `FAILPOINTS`.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

VARIABLE = "ALIGNFLOW_FAILPOINT"
FAILPOINTS = {
    "sft.step": "after a training step of the SFT stage",
    "reward.step": "after a training step of the reward stage",
    "dpo.step": "after a training step of the DPO stage",
    "ppo.step": "after a PPO step",
    "rloo.step": "after a training step of the RLOO stage",
    "checkpoint.write": "with a checkpoint's files written but not yet marked complete",
    "register.version": "with a model version created but not yet given its alias",
    "promote.alias": "with previous-champion moved but champion not yet",
}
_reached: Counter[str] = Counter()


def failpoint(name: str) -> None:
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    target, _, nth = spec.partition("@")
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
