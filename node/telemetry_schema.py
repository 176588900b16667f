"""The telemetry contract between the nodes and whoever reads them: topics and payloads.

The topic tree (every payload is a JSON object with `"schema": 1`; `<prefix>` is
`qkdnet/<topology>`):

- `<prefix>/node/<id>/status` (retained): `state` ("up", then "stopped" on a clean exit, or
  "lost", the broker's last will, when the node vanished), `pid`, `address`, `links`, `uptime_s`,
  and `delivery`: delivered keys it holds (`keys_waiting`, `keys_pending`, `pool_keys`) and has
  discarded (`keys_expired`, `pending_expired`, `pool_keys_expired`, `keys_abandoned`,
  `keys_voided`).
- `<prefix>/link/<a>--<b>/stats` (retained, from the transmitting end `a`): QBER (cumulative
  `qber`, and `last_sample_qber`, the last frame's disclosed sample, once there is one), sifted and
  secret key rates next to the model's, frame counters, reconciliation efficiency. Rates are
  per emulated second (what the model predicts; a link with `speedup: 10` emulates ten seconds
  per wall second) except `wall_secret_rate_bps`, key stored per wall second lately; `kind`
  (the link kind), `source` (where key comes from when not the link's own photons: "external
  KME https://... (as SAE ...)") and `last_fault` (why the last session ended, "" before any).
- `<prefix>/link/<a>--<b>/store/<id>` (retained, from each end): unconsumed bits and blocks, all
  bits ever stored and the frame of the newest block. At the same `last_frame` both ends must
  report the same `total_bits`; no key material or digest of it is ever published.
- `<prefix>/node/<id>/events` (not retained): `event` is one of "node_started",
  "node_stopping", "link_state" (`from`, `to`), "frames_aborted" (`reasons`),
  "messages_rejected" (`reasons`).
- `<prefix>/relay/events/<id>` (not retained), from the master SAE's node: "key_delivered"
  (`master`, `slaves`, `keys`, `key_bits`, `source`: local/pool/relay/pool+relay, `pooled`,
  `relayed`, `ms`, `routes`: [{`target`, `route`, `hop_ms`, `share`, `shares`}]),
  "pool_filled" (the same plus `pool`, the pool's size after the fill) and "relay_failed"
  (`reason`, `message`), and "keys_abandoned" (`master`, `slaves`, `keys`: keys withdrawn
  because the master hung up before its answer was written). `hop_ms[i]` is the time node
  `route[i]` spent, including every later hop. Key IDs and keys are never published.

`SCHEMA_VERSION` is the `schema` of every payload; a reader refuses payloads of another.
"""

__all__ = ["SCHEMA_VERSION"]

SCHEMA_VERSION = 1
