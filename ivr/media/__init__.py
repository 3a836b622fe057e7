"""Media, sans-IO: RTP packets, G.711, RFC 4733 keys, one call's stream, pacing arithmetic, RTP ports, prompts."""
