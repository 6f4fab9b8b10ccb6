"""The wire contract: subjects, models, errors and events. Pure data, no I/O.

Everything that travels on NATS is defined here once; the node, the agents, the
client and the generated JSON Schemas all import it.
"""
