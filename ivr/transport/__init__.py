"""The only code that owns sockets and loop timers: the SIP shell (UDP, TCP) and the RTP shell (the shared tick)."""
