"""Live calls: the router, one IVR call, the live queues on the engine, the callback dialer, outbound legs."""
