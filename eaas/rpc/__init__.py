"""What both ends of the expert RPC share: the tensor wire format, the transport a gateway calls servers
through, and the per-expert token counter both export to Prometheus."""
