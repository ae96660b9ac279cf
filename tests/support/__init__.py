"""What only the tests use, shared by the tiers: waiting for a state (`waiting`)."""
