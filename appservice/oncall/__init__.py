"""The appservice's on-duty role addressing: role accounts, pages, escalation, quiet hours."""
