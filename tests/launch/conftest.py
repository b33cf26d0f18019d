# The session-scoped `hosts` fixture (three namespace hosts) lives in tests/conftest.py: the launch tests and the
# Slurm tests (tests/scheduler) share one set of namespaces per session.
