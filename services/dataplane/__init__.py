"""What only the data plane (workers and gateways) shares: the framed link's framing,
request gathering, routing fields in V2 parameters, OS priority, ordered streams, the
V2 server metadata, version numbers, the registry watcher, traffic weights.

It may import `services.common`; neither `services.common` nor the registry imports
it, so the layout shows that the control plane knows no data-plane internals.
"""
