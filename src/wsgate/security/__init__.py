"""Security policy: realms, credentials, login modules, TLS contexts, Origin, limits and the admission decision."""
