"""ddlc: a Distributed Deep Learning Cluster you can deploy, train on, checkpoint, monitor and maintain.

The library is usable piece by piece from your own training script::

    from ddlc.runtime import init_distributed, wrap_model, MetricsLogger
"""

__version__ = "0.1.0"
