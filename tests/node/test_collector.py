"""sensing_node.runtime.collector: the collector's thresholds in a media process."""

from __future__ import annotations

import gc
from typing import Any


def test_tune_raises_only_the_youngest_threshold_and_cycles_are_still_collected() -> None:
    from sensing_node.runtime import collector

    before = gc.get_threshold()
    runs: list[int] = []

    def seen(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            runs.append(info["collected"])

    try:
        gc.set_threshold(700, 10, 10)
        assert collector.tune() == (700, 10, 10)
        assert gc.get_threshold() == (collector.GEN0, 10, 10)
        gc.collect()
        gc.callbacks.append(seen)
        for _ in range(collector.GEN0 // 4):  # cycles nobody refers to: only the collector
            cycle: list[Any] = []              # frees them
            cycle.append(cycle)
        assert runs == []  # fewer than GEN0 young objects: no collection yet
        for _ in range(collector.GEN0):
            cycle = []
            cycle.append(cycle)
        assert runs and sum(runs) >= collector.GEN0 // 4  # collected without being asked
    finally:
        if seen in gc.callbacks:
            gc.callbacks.remove(seen)
        gc.set_threshold(*before)
