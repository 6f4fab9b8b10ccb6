"""Nex, the NATS Execution Engine."""

__version__ = "0.1.0"
API_VERSION = "v1"

__all__ = ["API_VERSION", "__version__"]
