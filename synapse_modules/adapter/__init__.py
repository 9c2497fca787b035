"""The Synapse adapter: every use CareMatrix makes of Synapse beyond its documented module
API (``synapse.module_api``, ``synapse.module_api.errors`` and the documented module
callbacks and SSO mapping provider interface).

Synapse gives modules no hook on media downloads or uploads, none before a profile change, no way to purge a message at once or to
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

The 32 places:

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
    ``get_user_by_access_token``; ``Requester.authenticated_entity`` (an admin acting as a
    user); ``SynapseRequest.requester``, read once Synapse's own servlet has answered (the
    audit record of a file request names who Synapse found had sent it).
    [test_the_media_gate_sees_every_download_and_thumbnail_first,
    test_an_application_service_token_downloads_as_its_sender_or_a_user_it_names,
    test_who_synapse_found_is_read_after_it_answers_and_an_admin_acting_as_a_user_is_named]
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
    API use reaches the audit trail from it; file requests do not, they have their own).
    [test_admin_api_use_is_recorded_from_synapses_request_log,
    test_file_requests_are_left_to_their_own_records_not_the_request_log]

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
    after read); ``event_relations``: its edits, and the service's messages that refer to
    it (``m.reference``: a voice message's transcript burns with it).
    [test_read_receipts_and_edits_as_stored]
19. ``event_search``: a burnt message's row in the full-text index.
    [test_censoring_replaces_the_stored_json_and_drops_the_search_row]
20. ``room_retention``, ``room_stats_state`` and ``events``: what the retention purge will
    delete (``carematrix retention report``).
    [test_the_retention_report_reads_lifetimes_and_message_ages]

media.py (uploads)
21. The upload servlets' ``on_POST`` (``UploadServlet``) and ``on_PUT``
    (``AsyncUploadServlet``), wrapped so the audit sees every upload request, and
    ``MediaRepository.create_or_update_content`` (type, length, the new ``MXCUri``), wrapped
    so it learns which file the request stored.
    [test_the_upload_observer_sees_every_upload_and_the_file_it_stored]

profile.py
22. ``ProfileHandler.set_displayname`` (keyword arguments ``target_user``, ``requester``,
    ``new_displayname``, ``by_admin``), wrapped so a person's own change of their global
    display name meets the real-name rule first and a refusal carries our message and rule.
    [test_a_users_own_display_name_change_is_put_to_the_guard_first]

Behaviour relied on without code of ours
23. Synapse refuses a deactivated account after a password auth checker has accepted its
    password (synapse_modules/ldap_auth.py: leavers stay out).
    [test_a_deactivated_account_stays_shut_although_an_auth_checker_accepts_it]
24. Synapse calls an OpenID mapping provider's ``get_extra_attributes`` on every sign-in,
    also once the IdP subject is linked to an account (synapse_modules/sso_mapping.py
    checks the staff list there).
    [test_every_oidc_sign_in_asks_the_mapping_provider_for_extra_attributes;
    tests/e2e/test_sso_signin.py: test_a_leaver_is_refused_although_their_sso_link_remains]

homeserver.py (the worker deployment)
25. ``get_room_max_stream_ordering`` of the main data store: how far this process has seen
    the event stream (a worker's replication lag in ``carematrix status``).
    [test_a_process_has_seen_the_event_stream_up_to_its_last_stored_event]

search.py
26. Chinese text in the user directory and message search (carematrix/cjk_search.py): the
    module functions ``_filter_text_for_index`` (display names and queries) and
    ``_parse_words`` (the query's words) of ``synapse.storage.databases.main.user_directory``;
    ``SearchWorkerStore.store_search_entries_txn`` (the indexed text of a message) and
    ``SearchStore.search_msgs`` / ``search_rooms`` (the query and its highlights); the
    re-index at start through ``_update_profiles_in_user_dir_txn`` and ``_UserDirProfile``,
    the tables ``user_directory``, ``user_directory_search``,
    ``user_directory_stale_remote_users``, ``event_search`` and ``event_json``, and
    ``config.worker.run_background_tasks``.
    [test_chinese_display_names_are_indexed_and_searched_alike_in_the_user_directory,
    test_chinese_words_in_messages_are_indexed_and_searched_alike,
    test_rows_indexed_before_are_reindexed_once_at_start]

listeners.py (the worker deployment)
27. ``listen_unix`` and ``listen_tcp`` of ``synapse.app._base``, called by name from
    ``listen_http`` without a backlog: wrapped to open every listener with a deeper accept
    queue, so a burst of proxied requests waits instead of being refused with a 502.
    [test_synapse_adapter_static.py: test_listeners_are_opened_by_the_wrapped_functions_without_a_backlog,
    test_a_listener_is_opened_with_the_deeper_backlog,
    test_a_burst_of_connections_waits_to_be_accepted_instead_of_being_refused]

push.py
28. ``HttpPusher.dispatch_push`` (the notification as ``dispatch_push_event`` built it for
    the pusher's format, before the device and its tweaks are added), wrapped so no room
    name, sender display name or content reaches the push gateway whatever the format
    (carematrix/rules/push.py).
    [test_synapse_adapter_static.py: test_every_push_notification_passes_the_filter_before_it_is_posted]

sso.py (the sign-in's logging context)
29. ``OidcProvider._fetch_userinfo``, wrapped to run as a call that does not follow Synapse's
    logging-context rules (it awaits Twisted's ``readBody`` directly): without it every SSO
    sign-in through the userinfo endpoint logs errors and loses its request metrics.
    [test_synapse_adapter_static.py: test_the_userinfo_fetch_is_wrapped_once_and_takes_the_token;
    tests/e2e/test_sso_signin.py: test_staff_sign_in_through_the_hospital_sso]

appservice_log.py (the homeserver's log configuration)
30. The message and level ``ApplicationServiceApi.query_alias`` logs the service's 404 with
    (``query_alias to %s received %s``, WARNING) on the ``synapse.appservice.api`` logger: a
    filter logs that normal answer at INFO, so a WARNING stays a problem to act on.
    [test_synapse_adapter_static.py: test_an_alias_query_answered_404_is_logged_as_the_filter_expects;
    tests/e2e/test_commands_typed.py: test_an_alias_nobody_has_logs_no_warning]

sso_log.py (the homeserver's log configuration)
31. The message and level ``OidcProvider.handle_oidc_callback`` logs a ``MappingException``
    with (``Could not map user``, ``logger.exception``) on the ``synapse.handlers.oidc``
    logger: a filter logs a refused sign-in (a leaver, an outsider) as a WARNING with its
    reason, without the traceback an ERROR would be read as.
    [test_synapse_adapter_static.py: test_a_refused_sign_in_is_logged_as_the_filter_expects;
    tests/e2e/test_sso_signin.py: test_someone_not_on_the_staff_list_is_refused]

retention_log.py (the homeserver's log configuration)
32. The message and level ``PaginationHandler.purge_history_for_rooms_in_range`` logs a
    retention room with nothing old enough to purge with (``purging events not possible:
    No event found …``, WARNING) on the ``synapse.handlers.pagination`` logger: a
    filter logs that normal state at INFO.
    [test_synapse_adapter_static.py: test_a_purge_with_nothing_to_purge_is_logged_as_the_filter_expects;
    tests/e2e/test_protection.py: test_retention_purge_job_deletes_messages_past_the_class_lifetime]
"""
