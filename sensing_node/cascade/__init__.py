"""The node as a lower platform: registration to each upstream, the shared catalog, re-streaming."""
