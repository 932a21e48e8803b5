"""Everything the replicas share, kept in Redis (or an embedded fakeredis on one machine)."""
