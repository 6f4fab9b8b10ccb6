"""Agents: processes that run a node's functions (JavaScript, WebAssembly), spoken to over stdin/stdout."""
