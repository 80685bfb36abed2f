"""sensing-node: a GB/T 28181 video aggregation node."""
