"""The daemon: a small supervisor (`app.Daemon`) over the model service, the uplink, the control socket and the watchdog.

Modules: `app` the supervisor; `model_service` the model slot (its state machine, the face the updater uses);
`serving` the pipeline one model is served on; `observer` the loop observer that runs the monitors; `uplink` the
device's side of the fleet link and `commands` the remote commands it answers; `reload` config changes as plans;
`ports` the narrow ports the helpers get; `status`; `control` the local socket; `events` the event log.
Importing this package loads none of them (the CLI imports `agent.daemon.app` only for `edge-agent run`).
"""
