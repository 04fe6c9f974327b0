"""stigg-sidecar: a local, cached, fault-tolerant front for Stigg."""

__version__ = "0.1.0"
