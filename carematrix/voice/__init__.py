"""Voice messages as plain data: which message is a voice message, what its transcript reply
carries, what a person is told when it cannot be transcribed, and how a transcript is scored
against what was said. The recogniser itself runs in the appservice's worker processes
(``appservice/voice/``)."""
