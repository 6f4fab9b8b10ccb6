"""Placement's rules, pure: who may take a workload, how bids compare, whom an auction asks.

Used by the node's bids (``nex.node.bids``), the client (``nex.client``) and the reconciler
(``nex.fleet``) alike, so the three never disagree; imports nothing of nex but ``nex.api``.
``scoring``: eligibility, the score of a bid, the ranking and choice of bids, spread buckets;
``sampling``: which nodes a sampled auction asks.
"""
