"""Service registries as a source of backends: etcd with CoreDNS/SkyDNS records."""
