"""`python -m ddlc.train` (what `ddlc train` hands to torchrun): the same entry point as the root train.py."""

from ddlc.runtime.entry import run

if __name__ == "__main__":
    run()
