"""The Synapse adapter: every use CareMatrix makes of Synapse beyond its documented module
API (``synapse.module_api``, ``synapse.module_api.errors`` and the documented module
callbacks and SSO mapping provider interface).

Synapse gives modules no hook on media downloads, no way to purge a message at once or to
store many joins as one batch, and no record of failed logins or admin API use; those
features of CareMatrix lean on Synapse's internals, and all of that leaning is here. Code
outside this package imports nothing from Synapse but the module API, reads no private
attribute of a Synapse object and queries none of Synapse's tables
(tests/unit/test_synapse_adapter_inventory.py enforces it).

Each place below names its guard tests (tests/unit/test_synapse_adapter_live.py unless
another file is named). They import the installed Synapse and fail on an upgrade that
changes what the place relies on; most run the adapter on a real homeserver started in the
test process on SQLite and on PostgreSQL (tests/synapse_inprocess.py), reached over HTTP.
Before upgrading Synapse, run them against the new version.

The 22 places:

homeserver.py
 1. ``ModuleApi._hs``: the homeserver behind the module API, the way to everything below
    that is not a table.
    [test_the_module_api_leads_to_the_homeserver_and_its_database_engine]
 2. The class of the database engine (``PostgresEngine``): the SQL dialect of the
    homeserver database, which holds our tables too.
    [test_the_module_api_leads_to_the_homeserver_and_its_database_engine]

media.py
 3. The ``on_GET`` of the six media servlets (client v1, legacy ``/_matrix/media`` and
    federation; download and thumbnail), wrapped so the media gate sees every download
    first. Synapse registers the servlets' bound methods when it builds its listeners, after
    it has loaded the modules: the modules' constructors wrap them in time.
    [test_the_media_gate_sees_every_download_and_thumbnail_first;
    test_synapse_adapter_static.py: test_the_wrapped_media_servlets_take_the_arguments_the_gate_passes_on,
    test_no_servlet_outside_the_gate_serves_media, test_modules_are_loaded_before_the_listeners_are_built]
 4. The media repository: where the original of a local upload is, and deleting uploads
    with their thumbnails and rows.
    [test_local_media_files_their_hash_and_their_deletion]
 5. Answering a media request as Synapse answers its own: ``respond_with_json``,
    ``set_cors_headers``, ``set_corp_headers``.
    [test_the_gate_answers_a_refusal_and_its_own_bytes_as_synapse_answers_media]
 6. A thumbnail request's size and method, read and validated with ``parse_integer`` and
    ``parse_string``.
    [test_the_media_gate_sees_every_download_and_thumbnail_first]

auth.py
 7. Who asks for a file: ``Auth.has_access_token``, ``get_access_token_from_request``,
    ``get_appservice_user`` (an application service as its sender or a user it names) and
    ``get_user_by_access_token``.
    [test_the_media_gate_sees_every_download_and_thumbnail_first,
    test_an_application_service_token_downloads_as_its_sender_or_a_user_it_names]
 8. ``LoginRestServlet.on_POST``, wrapped so the audit sees every /login attempt: the body
    Synapse read (re-read without the password), the result or the error.
    [test_the_login_observer_sees_every_login_without_the_password;
    test_synapse_adapter_static.py: test_the_wrapped_login_servlet_takes_the_request]

events.py
 9. ``ThirdPartyEventRulesModuleApiCallbacks.check_event_allowed``, wrapped so our event
    checks run on every event before it is stored, without the room state Synapse loads
    for a registered ``check_event_allowed`` callback.
    [test_event_checks_run_on_every_event_before_it_is_stored;
    test_synapse_adapter_static.py: test_the_wrapped_event_rules_hook_takes_event_and_context]
10. Censoring a stored event at once (burn after read): ``store.expire_event`` on the main
    data store and its ``db_pool``.
    [test_censoring_replaces_the_stored_json_and_drops_the_search_row]

joins.py
11. Org sync's joins stored as one batch: ``EventCreationHandler.create_event`` with
    ``for_batch``, ``state_map``, ``prev_event_ids``; forward extremities and state group
    lookups; ``UnpersistedEventContext.batch_persist_unpersisted_contexts``;
    ``handle_new_client_event`` with many events.
    [test_a_batch_of_joins_is_stored_and_its_cached_state_is_the_stored_state]
12. The state group caches (``_state_group_cache``, ``_state_group_members_cache`` of the
    state store) filled for a batch's new state groups.
    [test_a_batch_of_joins_is_stored_and_its_cached_state_is_the_stored_state]

logging_context.py
13. ``PreserveLoggingContext`` around waking callers that wait for the audit writer or
    for the schema upgrade of our tables.
    [test_resumed_callers_run_in_their_own_logging_context_and_the_waker_keeps_its_own]

access_log.py
14. The request log line: the ``synapse.access`` loggers and the positions of the client
    address, requester, status, method and URI among the arguments of its log call (admin
    API use and media downloads reach the audit trail from it).
    [test_admin_api_use_is_recorded_from_synapses_request_log,
    test_media_use_is_recorded_from_synapses_request_log_and_an_admin_acting_as_a_user_is_named]

errors.py
15. An ``error`` field among a spam checker's extra response fields replaces Synapse's
    generic refusal message (our reason on a refused join or invite).
    [test_a_refused_join_tells_the_client_our_reason]

sso.py
16. ``synapse.handlers.sso.MappingException``, which an OpenID mapping provider raises to
    refuse a sign-in with a message.
    [test_synapse_adapter_static.py: test_sso_refusals_are_the_exception_synapses_oidc_handler_shows]

tables.py (Synapse's tables and columns)
17. ``local_media_repository.sha256``: the hash of an upload (no-forward of re-uploads).
    [test_local_media_files_their_hash_and_their_deletion]
18. ``events.stream_ordering`` and ``receipts_linearized``: who has read a message (burn
    after read); ``event_relations``: its edits.
    [test_read_receipts_and_edits_as_stored]
19. ``event_search``: a burnt message's row in the full-text index.
    [test_censoring_replaces_the_stored_json_and_drops_the_search_row]
20. ``room_retention``, ``room_stats_state`` and ``events``: what the retention purge will
    delete (``carematrix retention report``).
    [test_the_retention_report_reads_lifetimes_and_message_ages]

Behaviour relied on without code of ours
21. Synapse refuses a deactivated account after a password auth checker has accepted its
    password (synapse_modules/ldap_auth.py: leavers stay out).
    [test_a_deactivated_account_stays_shut_although_an_auth_checker_accepts_it]
22. Synapse calls an OpenID mapping provider's ``get_extra_attributes`` on every sign-in,
    also once the IdP subject is linked to an account (synapse_modules/sso_mapping.py
    checks the staff list there).
    [test_every_oidc_sign_in_asks_the_mapping_provider_for_extra_attributes;
    tests/e2e/test_sso_signin.py: test_a_leaver_is_refused_although_their_sso_link_remains]
"""
