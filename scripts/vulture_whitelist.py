"""Names vulture cannot see being used; `make lint` passes this file to it with the code.

Each line names something that is read by a library, by name, or by a person at a prompt.
"""
# ruff: noqa: F821, B018
# mypy: ignore-errors

# Counters read by name: gateway/metrics.py and hub/metrics.py export them with getattr, and
# bench/drivers.py samples the link's wait with getattr.
_.driver_restarts
_.commit_failures
_.acks_sent
_.current_wait_s
_.gateway_starts

# Attributes that asyncua and paho read from the objects we fill in.
_.session_timeout
_.description
_.connection_lost_callback
_.certificate_validator
_.SamplingInterval
_.QueueSize
_.DiscardOldest
_.ItemToMonitor
_.RequestedParameters
_.PayloadFormatIndicator
_.MessageExpiryInterval
_.SessionExpiryInterval
_.on_publish
_.on_socket_open
_.on_socket_close
_.on_unsubscribe
_.on_log
_.old_dvalue
_.set_current_datavalue

# Methods a library calls: asyncua's observer and user manager, paho's client internals
# (common/paho_fast.py overrides them), uvicorn's server.
_.observe_request
_.get_user
_._update_inflight
_._create_socket_connection
_.capture_signals
_.should_exit
_.force_exit

# Context-manager protocol arguments.
exc_type
tb

# Packet fields the JSON schema and pydantic validation read (sync/packet.py).
_.erpOrder
_.materialId
_.lotId
_.kopVersion
_.runId
_.tzOffset
_.ratePerHour
_.assignment
_.timeQuality
_.specversion
_.datacontenttype
_.dataschema

# The simulators' fault switches and counters, for a person driving them at a prompt.
_.replug
_.send_bad_checksum
_.bytes_relayed

# pytest and hypothesis read these by name.
pytestmark
_.teardown
test_protocol

# Response model fields (hub/api/models.py): FastAPI reads them to validate, serialise and
# document each answer; the code builds the answers as dicts.
_.startedAt
_.completedAt
_.lastEventTime
_.lastEventId
_.estimatedCompletion
_.updatedAt
_.asOf
_.lastIngest
_.ingestLagSeconds
# http.server calls or reads these by name (the webhook receivers of the tests and bench).
_.do_POST
_.log_message
_.daemon_threads
_.protocol_version
_.request_queue_size
# The board's templates read these by name (hub/board/templates); the audit log reads
# request.state.note (hub/api/audit.py).
_.y
_.due_x
_.now_x
_.eta_x
_.stale
_.dead_letters_day
_.last_dead_letter
_.zone_name
_.iso
_.note
# Selenium's browser options.
_.binary_location
