"""Entitlement-state caches: the ``CacheStore`` protocol with a memory (L1) and a Redis (L2)
implementation, the tiered cache over both, and replication between replicas."""
