"""Persistent model workers: the subprocess (``python -m appliance.worker``) and its clients."""
