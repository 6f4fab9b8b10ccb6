"""Agents: processes that run a node's functions (JavaScript today), spoken to over stdin/stdout."""
