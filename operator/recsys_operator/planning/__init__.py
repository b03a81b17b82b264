"""Pure planners: (spec, observed state, now) -> desired objects and status. No I/O here."""
