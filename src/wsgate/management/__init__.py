"""Operations: metrics, the management service and its console, structured logs."""
