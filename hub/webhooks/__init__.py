"""Webhooks: each supplier's feed POSTed to the endpoints hub.yaml names (docs/webhooks.md).

`settings` (hub.yaml's part), `allow` (the destination allow-list, checked at connect time),
`signing` (the HMAC header), `cursors` (per-endpoint cursors in the hub database), `client`
(one bounded POST), `endpoint` (one endpoint's delivery loop) and `deliverer` (the lease and
the loops of every endpoint).
"""
