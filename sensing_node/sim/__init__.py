"""Simulated peers for the demo and the tests: cameras below the node, an upper platform above."""
