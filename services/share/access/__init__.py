"""Access decisions: care teams, consent, role permissions, break-the-glass (the [access] issue)."""
