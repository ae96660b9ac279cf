"""What only the tests use, shared by the tiers: waiting for a state (`waiting`) and host
inspection with iproute2 for the netns tier (`hostcheck`)."""
