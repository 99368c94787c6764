"""A2A between environments (official `a2a-sdk` 1.x, protocol 1.0).

- `cards`: an environment's agent card (its skills, jurisdiction, accelerators);
- `discovery`: `PeerDirectory`, peers found from seed URLs, refreshed, marked down;
- `server`: the A2A routes of an environment, running capsule tasks through a typed handler;
- `client`: `Delegator`, a capsule task delegated to a peer (send, get, cancel, stream).

A capsule travels as the A2A tenant, and both sides apply `Environment.admits(capsule)`.
"""
