"""The rendezvous store of an elastic torchrun job, hosted by `ddlc launch` on the launching host (the head node),
which trains nothing: the store must outlive any training node.

    ddlc launch --(stdin pipe)--> python -m ddlc.launch.rdzv_store HOST PORT
                                     TCPStore server (multi-tenant) <-- every node's torchrun agent (c10d backend,
                                                                        is_host=false: none of them hosts it)
    prints "ready <port>" once listening; exits when its stdin closes (the launcher finished or died)

A separate process, so the launcher itself never imports torch.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    host, port = argv[0], int(argv[1])
    from torch.distributed import TCPStore

    store = TCPStore(host, port, is_master=True, multi_tenant=True, wait_for_workers=False)
    print(f"ready {store.port}", flush=True)
    sys.stdin.read()  # until the launcher closes the pipe (or dies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
