"""Voice messages transcribed on the hospital's own servers (docs/voice.md): the models
(``models.py``), the recogniser in worker processes (``engine.py``) and the service that
queues voice messages and answers each with its transcript (``service.py``)."""
