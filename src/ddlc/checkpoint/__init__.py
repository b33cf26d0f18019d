"""Sharded, async, atomic, verified checkpoints (DCP) on local disk or S3, with retention and resume."""

from ddlc.checkpoint.catalog import export, list_checkpoints, open_store, prune
from ddlc.checkpoint.checkpointer import Checkpointer, SaveStats
from ddlc.checkpoint.manifest import Manifest, verify
from ddlc.checkpoint.retention import select_for_deletion
from ddlc.checkpoint.storage import CheckpointStore, StorageError

__all__ = [
    "CheckpointStore",
    "Checkpointer",
    "Manifest",
    "SaveStats",
    "StorageError",
    "export",
    "list_checkpoints",
    "open_store",
    "prune",
    "select_for_deletion",
    "verify",
]
