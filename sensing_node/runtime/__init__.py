"""What every part of the node runs on: clocks, task supervision, counters and rate limits."""
