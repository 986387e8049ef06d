"""The NBIA API client: HTTP only (profiles, credentials, tokens, rows, the client, manifests)."""
