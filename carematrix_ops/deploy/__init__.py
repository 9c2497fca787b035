"""Render a complete deployment into the data dir: configs, fresh secrets, signing key.

Secrets are generated once into ``secrets.json`` and reused, so re-running ``carematrix up``
never invalidates sessions or tokens; configs are re-rendered from the templates
(``carematrix_ops/templates/*.in``) every time, so template improvements reach existing
installations.

One job per module: :mod:`.settings` (what the operator asked for, where files go),
:mod:`.checks` (data dir, policy dir and ports, before anything is written),
:mod:`.secrets` (secrets.json and the signing key), :mod:`.postgres` (the databases),
:mod:`.sign_in` (LDAP, OIDC and password settings), :mod:`.modules` (the Synapse modules),
:mod:`.demo_systems`, :mod:`.render` (config values and templates), :mod:`.record`
(deployment.json) and :mod:`.prepare`, which runs them in order.
"""
