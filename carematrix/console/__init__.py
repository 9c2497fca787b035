"""The operations console's pure parts: who may open which page (``access``), the on-call
board built from the roster index (``board``), the alerts list (``alerts``), signed-in
sessions and their CSRF tokens (``sessions``) and the HTML pages rendered with Jinja2
(``pages``). The Synapse module ``synapse_modules.console_module`` serves them over HTTP; the
appservice answers the board and alerts from its database (``appservice/console_api.py``)."""
