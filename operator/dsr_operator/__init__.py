"""dsr-operator: Direct Server Return load balancing on NetScaler, driven from Kubernetes."""

__version__ = "0.1.0"
