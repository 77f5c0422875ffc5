"""The command-centre board (指挥大屏): every checkpoint at a glance, from the stations' MQTT topics.

``station board --mqtt URL`` subscribes to the stations' topic tree (docs/mqtt.md), keeps its own
SQLite history (``history``) so a restart keeps the day's counts, and serves a web page with live
updates over server-sent events (``web``). ``state`` holds what the page shows, ``mqtt`` feeds it.
Deployment with several replicas on a clustered broker: docs/board.md.
"""
