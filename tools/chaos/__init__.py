"""The chaos campaign: faults injected into the twin, the gateway and agents, then an audit (`ktrader chaos`)."""
