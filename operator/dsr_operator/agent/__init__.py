"""Node agent: puts VIPs on the loopback/dummy interface with netlink and reports back."""
