"""The lottery-ticket workbench: iterative magnitude pruning with rewinding and controls.

    from prunekit.lottery import LotteryConfig, run_lottery
    run = run_lottery(LotteryConfig(model="lenet300100", dataset="mnist5k", rounds=9, rate=0.36))
    run.rows()   # per round and variant: density, accuracy, early-stopping iteration …
"""

from .config import CONTROLS, LotteryConfig
from .imp import Experiment, magnitude_masks, random_masks, rewind, run_lottery, split_validation
from .trainer import train_segment

__all__ = ["CONTROLS", "Experiment", "LotteryConfig", "magnitude_masks", "random_masks", "rewind", "run_lottery",
           "split_validation", "train_segment"]
