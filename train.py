#!/usr/bin/env python
"""Train with ddlc. Runs unchanged under python, torchrun, deepspeed and horovodrun:

    torchrun --standalone --nproc_per_node=2 train.py --config config.yaml training.max_steps=200
"""

from ddlc.runtime.entry import run

if __name__ == "__main__":
    run()
