"""Tools that drive a running server over the network: the load run and the SIP and media benchmarks."""
