"""Logs, metrics and log redaction: the bottom layer every other one may use."""
