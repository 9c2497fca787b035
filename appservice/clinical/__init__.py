"""Hospital systems into the conversation: HL7 v2 intake, routing, alerts."""
