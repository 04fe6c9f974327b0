"""Entitlement-state caches: one ``CacheStore`` protocol, a memory and a Redis implementation."""
