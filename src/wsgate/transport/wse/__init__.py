"""WebSocket emulation (Kaazing's WSE over HTTP): a second transport adapter behind the same admission and Channel."""
