"""Stigg upstream: the HTTP client, its GraphQL documents and typed errors."""
