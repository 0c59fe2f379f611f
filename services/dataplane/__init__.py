"""What only the data plane (workers and gateways) shares: the framed link's framing,
request gathering, OS priority, ordered streams, what the V2 service says alike on
both (metadata, the stream error's status parameter), version numbers, the registry
watcher, traffic weights.

It may import `services.common`; neither `services.common` nor the registry imports
it, so the layout shows that the control plane knows no data-plane internals.
"""
