"""The node's side of the recorder: which channels are recorded when, fed from the stream hub."""
