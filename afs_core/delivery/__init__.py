"""Getting events to channels: the journal and store that keep them, the engine that
delivers them, and the rules it keeps (retries, pacing, quiet policies, ranks)."""
