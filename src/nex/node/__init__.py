"""The node daemon: control service, workload table, feeds and supervisor."""
