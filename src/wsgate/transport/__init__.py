"""Transport adapters: sockets, TLS, HTTP and WebSocket framing (aiohttp today), and the back-end dialers."""
