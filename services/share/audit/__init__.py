"""The audit trail: every access recorded, append-only, hash-chained (the [access] issue)."""
