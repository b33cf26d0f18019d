"""Sharded, async, atomic, verified checkpoints (DCP) on local disk or S3, with retention and resume.

Names are imported on first use, so `ddlc checkpoints list|show|verify|prune` read a store without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "CheckpointIOError": "errors",
    "CheckpointLoadError": "errors",
    "CheckpointSaveError": "errors",
    "CheckpointStore": "storage",
    "StorageError": "storage",
    "Checkpointer": "checkpointer",
    "SaveStats": "checkpointer",
    "Manifest": "manifest",
    "read_commit": "manifest",
    "verify": "manifest",
    "export": "catalog",
    "list_checkpoints": "catalog",
    "open_store": "catalog",
    "prune": "catalog",
    "select_for_deletion": "retention",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ddlc.checkpoint' has no attribute {name!r}")
    return getattr(import_module(f"ddlc.checkpoint.{_EXPORTS[name]}"), name)
