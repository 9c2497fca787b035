"""On-duty role addressing: rosters, who holds a role now, escalation and quiet hours."""
