"""Slurm on the cluster: configuration files (slurm_conf), job scripts and submission (`ddlc submit`, `ddlc jobs`).

ddlc does not schedule anything itself: Slurm queues, allocates, drains and requeues; ddlc writes Slurm's files,
submits torchrun under srun, and reads Slurm's state back for `ddlc jobs` and the metrics.
"""
