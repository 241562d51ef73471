"""Helpers shared by the tests (not tests themselves): the ``trait`` command as a subprocess, local Spark and Slurm
clusters, tiny training configs. Session fixtures stay in tests/conftest.py."""
