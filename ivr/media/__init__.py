"""Media: RTP packets, G.711 codecs, RFC 4733 keys (pure), and the RTP endpoint."""
